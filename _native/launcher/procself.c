/* /proc/self/exe names the launcher, and only CAP_SYS_RESOURCE could change
 * that.  Programs that ask for their own path through it (perl's $^X, LLVM's
 * getMainExecutable) would then re-run ldpool-exec with their own arguments,
 * and programs that read themselves (self-extracting archives, checksums of
 * the running binary) would read the launcher.  So pooled code's readlink,
 * readlinkat and realpath of that link answer with the program's real path,
 * and its open/openat/fopen of it open the program, as the kernel does
 * natively.  Only the exact names /proc/self/exe, /proc/thread-self/exe and
 * /proc/<own pid>/exe are redirected: any other path costs one compare. */
#include "ldp.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char prog_path[PATH_MAX];   /* absolute, as the launcher opened it */
static char exe_path[PATH_MAX];    /* its realpath, computed on first need */
static pthread_once_t exe_once = PTHREAD_ONCE_INIT;

/* Start-up only records the path: most programs never ask, and realpath
 * costs a readlink per component.  A relative path (--plan mode) is made
 * absolute now, since the program may chdir before it asks. */
void ldp_procself_setup(const char *path)
{
    size_t n = 0, len = strlen(path);
    if (path[0] != '/') {
        if (!getcwd(prog_path, sizeof prog_path)) return;
        n = strlen(prog_path);
        if (n + 1 + len + 1 > sizeof prog_path) { prog_path[0] = 0; return; }
        prog_path[n++] = '/';
    }
    if (n + len + 1 > sizeof prog_path) return;
    memcpy(prog_path + n, path, len + 1);
}

static void resolve_exe(void)
{
    if (prog_path[0] && !realpath(prog_path, exe_path)) exe_path[0] = 0;
}

static const char *exe(void)
{
    pthread_once(&exe_once, resolve_exe);
    return exe_path[0] ? exe_path : NULL;
}

static int is_self_exe(const char *p)
{
    /* the common case (any other path) leaves after the first bytes */
    if (!p || p[0] != '/' || p[1] != 'p' || strncmp(p, "/proc/", 6) != 0 || !prog_path[0]) return 0;
    p += 6;
    if (strncmp(p, "self/", 5) == 0) p += 5;
    else if (strncmp(p, "thread-self/", 12) == 0) p += 12;
    else if (p[0] >= '1' && p[0] <= '9') {
        char own[32];
        int n = snprintf(own, sizeof own, "%d/", (int)getpid());
        if (strncmp(p, own, n) != 0) return 0;
        p += n;
    } else {
        return 0;
    }
    return strcmp(p, "exe") == 0;
}

/* the path to use instead of p, or p itself */
static const char *redirect(const char *p)
{
    const char *e;
    return is_self_exe(p) && (e = exe()) ? e : p;
}

static ssize_t answer(const char *e, char *buf, size_t size)
{
    size_t n = strlen(e);
    if (n > size) n = size;
    memcpy(buf, e, n);
    return n;
}

ssize_t ldp_readlink(const char *path, char *buf, size_t size)
{
    const char *e = redirect(path);
    return e != path ? answer(e, buf, size) : readlink(path, buf, size);
}

ssize_t ldp_readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
    const char *e = redirect(path);
    return e != path ? answer(e, buf, size) : readlinkat(dirfd, path, buf, size);
}

char *ldp_realpath(const char *path, char *resolved)
{
    const char *e = redirect(path);
    if (e == path) return realpath(path, resolved);
    if (!resolved && !(resolved = malloc(PATH_MAX))) return NULL;
    return strcpy(resolved, e);
}

/* the _FORTIFY_SOURCE forms (python3 and cmake call __realpath_chk) */
extern ssize_t __readlink_chk(const char *, char *, size_t, size_t);
extern ssize_t __readlinkat_chk(int, const char *, char *, size_t, size_t);
extern char *__realpath_chk(const char *, char *, size_t);
extern void __chk_fail(void) __attribute__((noreturn));

ssize_t ldp_readlink_chk(const char *path, char *buf, size_t size, size_t buflen)
{
    const char *e = redirect(path);
    if (e == path) return __readlink_chk(path, buf, size, buflen);
    if (size > buflen) __chk_fail();
    return answer(e, buf, size);
}

ssize_t ldp_readlinkat_chk(int dirfd, const char *path, char *buf, size_t size, size_t buflen)
{
    const char *e = redirect(path);
    if (e == path) return __readlinkat_chk(dirfd, path, buf, size, buflen);
    if (size > buflen) __chk_fail();
    return answer(e, buf, size);
}

/* the real path of the real path is itself */
char *ldp_realpath_chk(const char *path, char *resolved, size_t resolvedlen)
{
    return __realpath_chk(redirect(path), resolved, resolvedlen);
}

/* open's third argument exists only with O_CREAT or O_TMPFILE */
#define MODE_ARG(flags, mode) do { if ((flags) & (O_CREAT | __O_TMPFILE)) { va_list ap; va_start(ap, flags); \
        mode = va_arg(ap, int); va_end(ap); } } while (0)

int ldp_open(const char *path, int flags, ...)
{
    int mode = 0;
    MODE_ARG(flags, mode);
    return open(redirect(path), flags, mode);
}

int ldp_open64(const char *path, int flags, ...)
{
    int mode = 0;
    MODE_ARG(flags, mode);
    return open64(redirect(path), flags, mode);
}

int ldp_openat(int dirfd, const char *path, int flags, ...)
{
    int mode = 0;
    MODE_ARG(flags, mode);
    return openat(dirfd, redirect(path), flags, mode);
}

int ldp_openat64(int dirfd, const char *path, int flags, ...)
{
    int mode = 0;
    MODE_ARG(flags, mode);
    return openat64(dirfd, redirect(path), flags, mode);
}

/* the _FORTIFY_SOURCE entry points (flags not known at compile time) */
extern int __open_2(const char *, int);
extern int __open64_2(const char *, int);
extern int __openat_2(int, const char *, int);
extern int __openat64_2(int, const char *, int);
int ldp_open_2(const char *path, int flags) { return __open_2(redirect(path), flags); }
int ldp_open64_2(const char *path, int flags) { return __open64_2(redirect(path), flags); }
int ldp_openat_2(int dirfd, const char *path, int flags) { return __openat_2(dirfd, redirect(path), flags); }
int ldp_openat64_2(int dirfd, const char *path, int flags) { return __openat64_2(dirfd, redirect(path), flags); }

FILE *ldp_fopen(const char *path, const char *mode) { return fopen(redirect(path), mode); }
FILE *ldp_fopen64(const char *path, const char *mode) { return fopen64(redirect(path), mode); }

/* An exec of /proc/self/exe would start the launcher, with an argv[0] the
 * caller chose (python's os.execv, subprocess of sys.executable's link):
 * the program's own file is executed instead, as natively (the kernel's
 * ld.so runs it; not pooled, the same behaviour). */
int ldp_execve(const char *path, char *const argv[], char *const envp[])
{
    return execve(redirect(path), argv, envp);
}
int ldp_execv(const char *path, char *const argv[]) { return execv(redirect(path), argv); }
int ldp_execvp(const char *file, char *const argv[]) { return execvp(redirect(file), argv); }
int ldp_execvpe(const char *file, char *const argv[], char *const envp[])
{
    return execvpe(redirect(file), argv, envp);
}
int ldp_posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                    const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    return posix_spawn(pid, redirect(path), fa, attr, argv, envp);
}
int ldp_posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                     const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    return posix_spawnp(pid, redirect(file), fa, attr, argv, envp);
}

/* execl's list as an argv; with_env: execle's envp follows the NULL */
#define LIST_ARGV(arg0, v, envp, with_env) do { va_list ap; size_t n = 1; va_start(ap, arg0); \
        while (va_arg(ap, char *)) n++; va_end(ap); v = __builtin_alloca((n + 1) * sizeof *v); \
        va_start(ap, arg0); v[0] = (char *)arg0; for (size_t k = 1; k <= n; k++) v[k] = va_arg(ap, char *); \
        if (with_env) envp = va_arg(ap, char **); va_end(ap); } while (0)

int ldp_execl(const char *path, const char *arg0, ...)
{
    char **v, **envp = NULL;
    LIST_ARGV(arg0, v, envp, 0);
    (void)envp;
    return execv(redirect(path), v);
}
int ldp_execlp(const char *file, const char *arg0, ...)
{
    char **v, **envp = NULL;
    LIST_ARGV(arg0, v, envp, 0);
    (void)envp;
    return execvp(redirect(file), v);
}
int ldp_execle(const char *path, const char *arg0, ...)
{
    char **v, **envp = NULL;
    LIST_ARGV(arg0, v, envp, 1);
    return execve(redirect(path), v, envp);
}
