/* The registry of pooled objects in this process: one global index space
 * shared by the program's plan and later dlopen plans, each object with a
 * fake link_map (for dl* handles, dlinfo and gdb) and the dynamic-section
 * facts that dlsym/dladdr need. */
#include "ldp.h"
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct ldp_rt **ldp_objs;
uint32_t ldp_nobj, ldp_main = LDP_NONE;
int ldp_adds, ldp_subs;
static uint32_t cap;

static uint64_t dptr(struct ldp_rt *r, uint64_t v)
{
    /* images may or may not have their .dynamic pointers pre-adjusted */
    if (v >= r->o->map_start && v < r->o->map_end) return v;
    return v + r->o->l_addr;
}

void ldp_rt_dyninfo(struct ldp_rt *r)
{
    if (!r->o->l_ld) return;
    uint64_t soname = 0, has_soname = 0;
    for (const Elf64_Dyn *d = (const Elf64_Dyn *)r->o->l_ld; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_SYMTAB: r->symtab = (const void *)dptr(r, d->d_un.d_ptr); break;
        case DT_STRTAB: r->strtab = (const void *)dptr(r, d->d_un.d_ptr); break;
        case DT_GNU_HASH: r->gnu_hash = (const void *)dptr(r, d->d_un.d_ptr); break;
        case DT_HASH: r->sysv_hash = (const void *)dptr(r, d->d_un.d_ptr); break;
        case DT_VERSYM: r->versym = (const void *)dptr(r, d->d_un.d_ptr); break;
        case DT_VERDEF: r->verdef = (const void *)dptr(r, d->d_un.d_ptr); break;
        case DT_SONAME: soname = d->d_un.d_val; has_soname = 1; break;
        }
    }
    if (r->strtab && has_soname) r->soname = r->strtab + soname;
}

/* The symbol count, on first need (dladdr): the hash tables are file pages
 * nothing else touches at start-up.  Racing callers store the same value. */
uint32_t ldp_rt_nsyms(struct ldp_rt *r)
{
    uint32_t n = __atomic_load_n(&r->nsyms, __ATOMIC_RELAXED);
    if (n) return n;
    if (r->sysv_hash) {
        n = r->sysv_hash[1];
    } else if (r->gnu_hash) {
        const uint32_t *g = r->gnu_hash;
        uint32_t nb = g[0], symoff = g[1], bloom = g[2];
        const uint32_t *buckets = g + 4 + bloom * 2, *chain = buckets + nb;
        uint32_t max = 0;
        for (uint32_t i = 0; i < nb; i++) if (buckets[i] > max) max = buckets[i];
        if (max >= symoff) {
            while (!(chain[max - symoff] & 1)) max++;
            n = max + 1;
        } else {
            n = symoff;
        }
    }
    __atomic_store_n(&r->nsyms, n, __ATOMIC_RELAXED);
    return n;
}

static int needed_matches(struct ldp_rt *r, const char *need)
{
    if (r->soname && strcmp(r->soname, need) == 0) return 1;
    const char *b = strrchr(r->path, '/');
    if (strcmp(b ? b + 1 : r->path, need) == 0) return 1;
    return strcmp(r->name, need) == 0;
}

/* The local scope of r: itself, then breadth-first DT_NEEDED among pooled
 * objects.  Computed on the first dlsym(handle) (under the dl* lock), not at
 * start-up: matching names reads every object's .dynstr, file pages a
 * program that never asks would not touch. */
void ldp_rt_deps(struct ldp_rt *r)
{
    if (r->deps) return;
    uint32_t *q = malloc(sizeof *q * (ldp_nobj + 1)), n = 0;
    unsigned char *seen = calloc(ldp_nobj + 1, 1);
    q[n++] = r->index;
    seen[r->index] = 1;
    for (uint32_t h = 0; h < n; h++) {
        struct ldp_rt *x = ldp_objs[q[h]];
        if (!x->o->l_ld || !x->strtab) continue;
        for (const Elf64_Dyn *d = (const Elf64_Dyn *)x->o->l_ld; d->d_tag != DT_NULL; d++) {
            if (d->d_tag != DT_NEEDED) continue;
            const char *need = x->strtab + d->d_un.d_val;
            for (uint32_t i = 0; i < ldp_nobj; i++) {
                if (!ldp_objs[i] || ldp_objs[i]->state == LDP_ST_GONE || !needed_matches(ldp_objs[i], need)) continue;
                if (!seen[i]) seen[i] = 1, q[n++] = i;
                break;
            }
        }
    }
    free(seen);
    r->ndeps = n;
    r->deps = q;
}

void ldp_objects_add(struct ldp_plan *p)
{
    uint32_t need = p->first_index + p->h->nobj;
    if (need > cap) {
        /* other threads read the registry without the dl* lock (unwinding,
         * __tls_get_addr): the old array and records are never freed */
        uint32_t ncap = need + 16;
        struct ldp_rt **n = calloc(ncap, sizeof *n);
        if (ldp_objs) memcpy(n, ldp_objs, sizeof *n * cap);
        __atomic_store_n(&ldp_objs, n, __ATOMIC_RELEASE);
        cap = ncap;
    }
    for (uint32_t i = 0; i < p->h->nobj; i++) {
        uint32_t g = p->first_index + i;
        struct ldp_rt *r = calloc(1, sizeof *r);
        r->magic = LDP_RT_MAGIC;
        r->o = &p->obj[i];
        r->plan = p;
        r->index = g;
        r->name = ldp_str(p, r->o->name);
        r->path = ldp_str(p, r->o->path);
        r->lm.l_addr = r->o->l_addr;
        /* l_name is the name as ld.so built it ("lib/libfoo.so" when found
         * through a relative search path); path, absolute, is for opening */
        r->lm.l_name = (char *)((r->o->flags & LDP_OBJ_MAIN) ? "" : r->name);
        r->lm.l_ld = (Elf64_Dyn *)r->o->l_ld;
        r->global = 1;
        __atomic_store_n(&ldp_objs[g], r, __ATOMIC_RELEASE);   /* a reused index keeps the old record alive */
        if (r->o->flags & LDP_OBJ_MAIN) ldp_main = g;
    }
    if (need > ldp_nobj) __atomic_store_n(&ldp_nobj, need, __ATOMIC_RELEASE);
}

/* The link maps a program can walk from its handles (dlinfo
 * RTLD_DI_LINKMAP, dlopen(NULL)): the program, the live pooled objects in
 * load order, then ld.so's own list after the launcher (vdso, glibc's
 * family), whose maps are only pointed at, never written. */
void ldp_objects_relink(void)
{
    struct link_map *prev = NULL, *tail = _r_debug.r_map ? _r_debug.r_map->l_next : NULL;
    if (ldp_main != LDP_NONE && ldp_objs[ldp_main]) {
        prev = &ldp_objs[ldp_main]->lm;
        prev->l_prev = NULL;
    }
    for (uint32_t i = 0; i < ldp_nobj; i++) {
        struct ldp_rt *r = ldp_objs[i];
        if (!r || i == ldp_main || r->state < LDP_ST_MAPPED || r->state == LDP_ST_GONE) continue;
        r->lm.l_prev = prev;
        if (prev) __atomic_store_n(&prev->l_next, &r->lm, __ATOMIC_RELEASE);
        prev = &r->lm;
    }
    if (prev) __atomic_store_n(&prev->l_next, tail, __ATOMIC_RELEASE);
}

/* Called once mapped: the dynamic sections are readable now. */
void ldp_objects_mapped(struct ldp_plan *p)
{
    for (uint32_t i = 0; i < p->h->nobj; i++) {
        struct ldp_rt *r = ldp_objs[p->first_index + i];
        ldp_rt_dyninfo(r);
        r->state = LDP_ST_MAPPED;
        ldp_adds++;
    }
    /* a remapped object's scope is found again on need */
    for (uint32_t i = 0; i < p->h->nobj; i++) {
        struct ldp_rt *r = ldp_objs[p->first_index + i];
        free(r->deps);
        r->deps = NULL;
        r->ndeps = 0;
    }
}

struct ldp_rt *ldp_find_addr(const void *addr)
{
    uint64_t a = (uint64_t)addr;
    for (uint32_t i = 0; i < ldp_nobj; i++) {
        struct ldp_rt *r = ldp_objs[i];
        if (r && r->state >= LDP_ST_MAPPED && r->state != LDP_ST_GONE && a >= r->o->map_start &&
            a < r->o->map_end)
            return r;
    }
    return NULL;
}

struct ldp_rt *ldp_from_handle(void *h)
{
    for (uint32_t i = 0; i < ldp_nobj; i++)
        if (ldp_objs[i] && (void *)ldp_objs[i] == h) return ldp_objs[i];
    return NULL;
}

/* The loaded object dlopen(name) means, as ld.so matches it: by path for
 * names with a slash, else by soname or file name. */
static struct ldp_rt *find_name(const char *name, int gone);

struct ldp_rt *ldp_find_name(const char *name) { return find_name(name, 0); }

/* A dlclose()d object of that name, whose plan can be mapped again. */
struct ldp_rt *ldp_find_unloaded(const char *name) { return find_name(name, 1); }

static struct ldp_rt *find_name(const char *name, int gone)
{
    struct stat want;
    int slash = strchr(name, '/') != NULL;
    /* the same file, as ld.so compares them (device and inode) */
    if (slash && stat(name, &want) != 0) return NULL;
    for (uint32_t i = 0; i < ldp_nobj; i++) {
        struct ldp_rt *r = ldp_objs[i];
        if (!r || r->state < LDP_ST_MAPPED || (r->state == LDP_ST_GONE) != gone || (r->o->flags & LDP_OBJ_MAIN))
            continue;
        if (slash) {
            if (!r->statted) {
                struct stat st;
                r->statted = 1;
                if (stat(r->path, &st) == 0) r->dev = st.st_dev, r->ino = st.st_ino;
            }
            if (r->ino && r->ino == want.st_ino && r->dev == want.st_dev) return r;
        } else if (needed_matches(r, name)) {
            return r;
        }
    }
    return NULL;
}
