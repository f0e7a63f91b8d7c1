/* /proc/self/exe names the launcher, and only CAP_SYS_RESOURCE could change
 * that.  Programs that ask for their own path through it (perl's $^X, LLVM's
 * getMainExecutable) would then re-run ldpool-exec with their own arguments,
 * so pooled code's readlink/readlinkat/realpath of that link answer with the
 * program's real path, as the kernel does natively. */
#include "ldp.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char exe_path[PATH_MAX];

void ldp_procself_setup(const char *path)
{
    if (!realpath(path, exe_path)) exe_path[0] = 0;
}

static int is_self_exe(const char *p)
{
    if (!exe_path[0] || !p || strncmp(p, "/proc/", 6) != 0) return 0;
    p += 6;
    if (strncmp(p, "self/", 5) == 0) p += 5;
    else if (strncmp(p, "thread-self/", 12) == 0) p += 12;
    else {
        char own[32];
        int n = snprintf(own, sizeof own, "%d/", (int)getpid());
        if (strncmp(p, own, n) != 0) return 0;
        p += n;
    }
    return strcmp(p, "exe") == 0;
}

static ssize_t answer(char *buf, size_t size)
{
    size_t n = strlen(exe_path);
    if (n > size) n = size;
    memcpy(buf, exe_path, n);
    return n;
}

ssize_t ldp_readlink(const char *path, char *buf, size_t size)
{
    return is_self_exe(path) ? answer(buf, size) : readlink(path, buf, size);
}

ssize_t ldp_readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
    return path && path[0] == '/' && is_self_exe(path) ? answer(buf, size) : readlinkat(dirfd, path, buf, size);
}

char *ldp_realpath(const char *path, char *resolved)
{
    if (!is_self_exe(path)) return realpath(path, resolved);
    if (!resolved && !(resolved = malloc(PATH_MAX))) return NULL;
    return strcpy(resolved, exe_path);
}
