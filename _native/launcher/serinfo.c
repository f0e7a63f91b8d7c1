/* dlinfo RTLD_DI_SERINFO/RTLD_DI_SERINFOSIZE for pooled objects: the
 * directories glibc would search for a dlopen from that object, in its
 * order (glibc's _dl_rtld_di_serinfo): the object's DT_RPATH and then the
 * program's (only when the object has no DT_RUNPATH), LD_LIBRARY_PATH, the
 * object's DT_RUNPATH, then the system directories unless DF_1_NODEFLIB.
 * The broker does the real searching; this only describes it.  glibc leaves
 * out directories it has already found missing: we cannot know which, so
 * we list all (as glibc does before any lookup failed there).  glibc leaves
 * dls_flags 0 (its add_path flags are an XXX), and so do we. */
#include "ldp.h"
#include <string.h>
#include <stdlib.h>

static const char *const system_dirs[] = {
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib",
};

struct acc { Dl_serinfo *si; int counting; unsigned idx; char *str; };

static void add_dir(struct acc *a, const char *dir, size_t len, unsigned flags)
{
    while (len > 1 && dir[len - 1] == '/') len--;   /* glibc strips trailing slashes */
    if (len == 0) { dir = "."; len = 1; }           /* an empty entry is the cwd */
    if (a->counting) {
        a->si->dls_cnt++;
        a->si->dls_size += len + 1;
        return;
    }
    if (a->idx >= a->si->dls_cnt) return;
    Dl_serpath *sp = &a->si->dls_serpath[a->idx++];
    memcpy(a->str, dir, len);
    a->str[len] = 0;
    sp->dls_name = a->str;
    sp->dls_flags = flags;
    a->str += len + 1;
}

/* a ':'/';'-separated list, $ORIGIN/${ORIGIN} expanded to origin */
static void add_list(struct acc *a, const char *list, const char *origin, size_t olen, unsigned flags)
{
    char buf[4096];
    const char *p = list;
    for (;;) {
        size_t n = strcspn(p, ":;"), k = 0;
        for (size_t i = 0; i < n && k < sizeof buf - 1;) {
            size_t t = 0;
            if (!strncmp(p + i, "$ORIGIN", 7) && (i + 7 >= n || !(p[i + 7] == '_' || (p[i + 7] | 32) - 'a' < 26u || p[i + 7] - '0' < 10u))) t = 7;
            else if (!strncmp(p + i, "${ORIGIN}", 9)) t = 9;
            if (t && origin) {
                size_t c = olen < sizeof buf - 1 - k ? olen : sizeof buf - 1 - k;
                memcpy(buf + k, origin, c); k += c; i += t;
            } else {
                buf[k++] = p[i++];
            }
        }
        add_dir(a, buf, k, flags);
        if (!p[n]) break;
        p += n + 1;
    }
}

static const char *dyn_str(struct ldp_rt *r, int64_t tag)
{
    if (!r->o->l_ld || !r->strtab) return NULL;
    for (const Elf64_Dyn *d = (const Elf64_Dyn *)r->o->l_ld; d->d_tag != DT_NULL; d++)
        if (d->d_tag == tag) return r->strtab + d->d_un.d_val;
    return NULL;
}

static int nodeflib(struct ldp_rt *r)
{
    if (!r->o->l_ld) return 0;
    for (const Elf64_Dyn *d = (const Elf64_Dyn *)r->o->l_ld; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_FLAGS_1) return (d->d_un.d_val & DF_1_NODEFLIB) != 0;
    return 0;
}

static void add_rpath(struct acc *a, struct ldp_rt *r, int64_t tag, unsigned flags)
{
    const char *s = dyn_str(r, tag);
    if (!s) return;
    const char *slash = strrchr(r->path, '/');
    add_list(a, s, r->path, slash ? (size_t)(slash - r->path) : 0, flags);
}

int ldp_serinfo(struct ldp_rt *r, Dl_serinfo *si, int counting)
{
    struct acc a = { si, counting, 0, NULL };
    if (counting) {
        si->dls_cnt = 0;
        si->dls_size = 0;
    } else {
        a.str = (char *)&si->dls_serpath[si->dls_cnt];
    }
    if (!dyn_str(r, DT_RUNPATH)) {
        add_rpath(&a, r, DT_RPATH, 0);
        struct ldp_rt *m = ldp_objs[ldp_main];
        if (m && m != r) add_rpath(&a, m, DT_RPATH, 0);
    }
    const char *env = getenv("LD_LIBRARY_PATH");
    if (env && *env) add_list(&a, env, NULL, 0, 0);
    add_rpath(&a, r, DT_RUNPATH, 0);
    if (!nodeflib(r))
        for (size_t i = 0; i < sizeof system_dirs / sizeof *system_dirs; i++)
            add_dir(&a, system_dirs[i], strlen(system_dirs[i]), 0);
    if (counting) si->dls_size += (char *)&si->dls_serpath[si->dls_cnt] - (char *)si;
    return 0;
}
