/* Hosted libraries: a DT_NEEDED library that replaces a function glibc
 * calls (malloc & co.) must be bound into glibc before glibc runs, so ld.so
 * loads it into the launcher as a preload and the plan lists it with
 * glibc's family, by path (loader/plan.py: _host_allocators).  The first
 * start that finds such a library not loaded starts the launcher again with
 * it appended to LD_PRELOAD (LDPOOL_HOSTED says what was appended); the
 * program's environment gets LD_PRELOAD back as it was. */
#include "ldp.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int ldp_hosted_active(void)
{
    return getenv("LDPOOL_HOSTED") != NULL;
}

static int loaded(const char *name)
{
    void *h = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
    if (h) dlclose(h);
    return h != NULL;
}

void ldp_hosted_preload(const struct ldp_plan *p, char **argv)
{
    /* glibc's own family is listed by soname, a hosted library by path */
    size_t cap = 1;
    for (uint32_t k = 0; k < p->h->nglibc; k++) cap += strlen(ldp_str(p, p->glibc[k])) + 1;
    char *add = malloc(cap), *o = add;
    for (uint32_t k = 0; k < p->h->nglibc; k++) {
        const char *name = ldp_str(p, p->glibc[k]);
        if (!strchr(name, '/') || loaded(name)) continue;
        if (o != add) *o++ = ':';
        o = stpcpy(o, name);
    }
    if (o == add) {
        free(add);
        return;
    }
    if (ldp_hosted_active())
        ldp_die(127, "a library that replaces glibc's allocator could not be preloaded (LD_PRELOAD=%s)",
                getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "");
    /* after the user's own preloads, as DT_NEEDED comes after LD_PRELOAD */
    const char *pre = getenv("LD_PRELOAD");
    char *v = malloc(strlen(pre ? pre : "") + strlen(add) + 2);
    strcpy(v, pre && *pre ? pre : "");
    if (*v) strcat(v, ":");
    strcat(v, add);
    setenv("LD_PRELOAD", v, 1);
    setenv("LDPOOL_HOSTED", add, 1);
    execv("/proc/self/exe", argv);
    ldp_die(127, "cannot re-run the launcher: %s", strerror(errno));
}

void ldp_hosted_restore_env(void)
{
    const char *add = getenv("LDPOOL_HOSTED");
    if (!add) return;
    const char *pre = getenv("LD_PRELOAD");
    size_t n = pre ? strlen(pre) : 0, a = strlen(add);
    if (pre && strcmp(pre, add) == 0) {
        unsetenv("LD_PRELOAD");
    } else if (pre && n > a && pre[n - a - 1] == ':' && strcmp(pre + n - a, add) == 0) {
        char *v = strndup(pre, n - a - 1);
        setenv("LD_PRELOAD", v, 1);
        free(v);
    }
    unsetenv("LDPOOL_HOSTED");
}
