/* What unwinders and iterators see: dl_iterate_phdr reports the program
 * first (in the launcher's place, named "" as natively), then ld.so's and
 * the pooled objects in the native load order; _dl_find_object knows pooled ranges
 * and their PT_GNU_EH_FRAME, which is all libgcc_s 12 needs to unwind.
 *
 * The launcher also exports both names: it is the main executable, first
 * in ld.so's global scope, so objects ld.so loads later bind to these too --
 * notably the libgcc_s glibc itself dlopens for backtrace() and for thread
 * cancellation unwinding, which must see pooled frames as well.  Inside
 * the launcher the real functions are reached through pointers. */
#include "ldp.h"
#include <string.h>
#include <sys/auxv.h>
#include <pthread.h>
#include <stdlib.h>

static int (*real_iterate)(int (*)(struct dl_phdr_info *, size_t, void *), void *);
static int (*real_find)(void *, struct dl_find_object *);

void ldp_iterate_setup(void)
{
    /* the launcher is first in the global scope: RTLD_NEXT is glibc's */
    real_iterate = dlvsym(RTLD_NEXT, "dl_iterate_phdr", "GLIBC_2.2.5");
    real_find = dlvsym(RTLD_NEXT, "_dl_find_object", "GLIBC_2.35");
    if (!real_iterate || !real_find) ldp_die(127, "internal error: glibc's dl_iterate_phdr or _dl_find_object not found");
}

int ldp_real_iterate_phdr(int (*cb)(struct dl_phdr_info *, size_t, void *), void *data)
{
    return real_iterate(cb, data);
}

struct it { int (*cb)(struct dl_phdr_info *, size_t, void *); void *data; int ret, seen_first;
            unsigned long long adds, subs; };

static void fill(struct dl_phdr_info *i, struct ldp_rt *r, struct it *c)
{
    memset(i, 0, sizeof *i);
    i->dlpi_addr = r->o->l_addr;
    i->dlpi_name = r->lm.l_name;
    i->dlpi_phdr = (const Elf64_Phdr *)r->o->phdr;
    i->dlpi_phnum = r->o->phnum;
    i->dlpi_adds = c->adds + ldp_adds;
    i->dlpi_subs = c->subs + ldp_subs;
    if (r->o->tls_tpoff || r->o->tls_memsz) {
        i->dlpi_tls_modid = r->o->tls_modid;
        i->dlpi_tls_data = ldp_tls_block(r);
    }
}

static int counts(struct dl_phdr_info *info, size_t size, void *data)
{
    struct it *c = data;
    c->adds = info->dlpi_adds, c->subs = info->dlpi_subs;
    return 1;
}

static int forward(struct dl_phdr_info *info, size_t size, void *data)
{
    struct it *c = data;
    if (!c->seen_first) {
        c->seen_first = 1;   /* the launcher itself: the program took its place */
        if (ldp_main != LDP_NONE) return 0;
    }
    info->dlpi_adds += ldp_adds;
    info->dlpi_subs += ldp_subs;
    return c->ret = c->cb(info, size, c->data);
}

static int iterate_legacy(int (*cb)(struct dl_phdr_info *, size_t, void *), void *data)
{
    struct it c = {cb, data, 0, 0, 0, 0};
    struct dl_phdr_info i;
    if (!real_iterate) ldp_iterate_setup();   /* a preload's initialiser (ASan's) runs before main */
    real_iterate(counts, &c);
    if (ldp_main != LDP_NONE) {
        fill(&i, ldp_objs[ldp_main], &c);
        if ((c.ret = cb(&i, sizeof i, data)) != 0) return c.ret;
    }
    real_iterate(forward, &c);
    if (c.ret) return c.ret;
    for (uint32_t k = 0; k < ldp_nobj; k++) {
        struct ldp_rt *r = ldp_objs[k];
        if (!r || k == ldp_main || r->state < LDP_ST_MAPPED || r->state == LDP_ST_GONE) continue;
        fill(&i, r, &c);
        if ((c.ret = cb(&i, sizeof i, data)) != 0) return c.ret;
    }
    return 0;
}

/* ---- the native order: the program, the vDSO, the objects of the start in
 * ld.so's breadth-first load order (glibc's family where it was first
 * needed), ld.so, then what was loaded later (pooled dlopens, then ld.so's).
 * The start's order is found once, on the first call after the program's
 * plan is mapped: a walk of DT_NEEDED names, as _dl_map_object_deps does. */
#define MAXLD 48          /* ld.so objects handled (on the stack); more: legacy order */
struct ord { struct ldp_rt *r; struct link_map *lm; };
static struct ord *initial;
static int ninitial, order_state;   /* 0 not yet, 1 ready, -1 use the legacy order */
static struct link_map *vdso_lm, *rtld_lm;
static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *lm_strtab(struct link_map *lm)
{
    if (!lm->l_ld) return NULL;
    for (const Elf64_Dyn *d = lm->l_ld; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_STRTAB)   /* ld.so relocated it in place (x86-64) */
            return (const char *)(d->d_un.d_ptr < lm->l_addr ? d->d_un.d_ptr + lm->l_addr : d->d_un.d_ptr);
    return NULL;
}

static int lm_matches(struct link_map *lm, const char *need)
{
    const char *b = strrchr(lm->l_name, '/');
    if (strcmp(b ? b + 1 : lm->l_name, need) == 0 || strcmp(lm->l_name, need) == 0) return 1;
    const char *st = lm_strtab(lm);
    if (!st) return 0;
    for (const Elf64_Dyn *d = lm->l_ld; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_SONAME) return strcmp(st + d->d_un.d_val, need) == 0;
    return 0;
}

static void compute_initial(void)
{
    struct ldp_plan *p0 = ldp_objs[ldp_main]->plan;
    struct link_map *lds[MAXLD];
    unsigned char ldseen[MAXLD] = {0};
    int nl = 0, npre = -1;
    /* ld.so's objects after the launcher itself; those before libc (the
     * launcher's own need) are LD_PRELOADs kept with ld.so */
    for (struct link_map *lm = _r_debug.r_map ? _r_debug.r_map->l_next : NULL; lm; lm = lm->l_next) {
        if (lm->l_addr == _r_debug.r_ldbase) rtld_lm = lm;
        else if (!strncmp(lm->l_name, "linux-vdso", 10) || !strncmp(lm->l_name, "linux-gate", 10)) vdso_lm = lm;
        else if (nl == MAXLD) { order_state = -1; return; }
        else {
            const char *b = strrchr(lm->l_name, '/');
            if (npre < 0 && !strcmp(b ? b + 1 : lm->l_name, "libc.so.6")) npre = nl;
            lds[nl++] = lm;
        }
    }
    uint32_t first = p0->first_index, np = p0->h->nobj;
    struct ord *q = calloc(np + nl + 1, sizeof *q);
    unsigned char *pseen = calloc(np + 1, 1);
    int n = 0;
    q[n++].r = ldp_objs[ldp_main];
    pseen[ldp_main - first] = 1;
    for (uint32_t i = 0; i < np; i++)   /* LD_PRELOAD comes right after the program */
        if ((p0->obj[i].flags & LDP_OBJ_PRELOAD) && !pseen[i]) pseen[i] = 1, q[n++].r = ldp_objs[first + i];
    for (int k = 0; k < npre; k++) {
        /* a hosted library (the plan lists it by path) was preloaded only
         * for ld.so: natively it is loaded where it is needed */
        int hosted = 0;
        for (uint32_t g = 0; g < p0->h->nglibc && !hosted; g++)
            hosted = strcmp(ldp_str(p0, p0->glibc[g]), lds[k]->l_name) == 0;
        if (!hosted) ldseen[k] = 1, q[n].r = NULL, q[n++].lm = lds[k];
    }
    for (int h = 0; h < n; h++) {
        const Elf64_Dyn *dyn = q[h].r ? (const Elf64_Dyn *)q[h].r->o->l_ld : q[h].lm->l_ld;
        const char *st = q[h].r ? q[h].r->strtab : lm_strtab(q[h].lm);
        if (!dyn || !st) continue;
        for (const Elf64_Dyn *d = dyn; d->d_tag != DT_NULL; d++) {
            if (d->d_tag != DT_NEEDED) continue;
            const char *need = st + d->d_un.d_val;
            int found = 0;
            for (uint32_t i = 0; i < np && !found; i++) {
                struct ldp_rt *r = ldp_objs[first + i];
                if (!r || first + i == ldp_main || !(r->name[0] || r->path[0])) continue;
                if (strcmp(r->name, need) == 0 || (r->soname && strcmp(r->soname, need) == 0) ||
                    (strrchr(r->path, '/') && strcmp(strrchr(r->path, '/') + 1, need) == 0)) {
                    found = 1;
                    if (!pseen[i]) pseen[i] = 1, q[n++].r = r;
                }
            }
            for (int k = 0; k < nl && !found; k++)
                if (lm_matches(lds[k], need)) {
                    found = 1;
                    if (!ldseen[k]) ldseen[k] = 1, q[n].r = NULL, q[n++].lm = lds[k];
                }
        }
    }
    for (uint32_t i = 0; i < np; i++)    /* not reached by name: still the start's */
        if (!pseen[i] && ldp_objs[first + i]) q[n++].r = ldp_objs[first + i];
    free(pseen);
    initial = q, ninitial = n;
    order_state = 1;
}

struct coll { struct dl_phdr_info v[MAXLD + 3]; int n, over; unsigned long long adds, subs; };

static int collect(struct dl_phdr_info *info, size_t size, void *data)
{
    struct coll *c = data;
    if (c->n == 0) c->adds = info->dlpi_adds, c->subs = info->dlpi_subs;
    if (c->n == MAXLD + 3) return c->over = 1;
    c->v[c->n++] = *info;
    return 0;
}

static int emit(struct coll *c, int k, int (*cb)(struct dl_phdr_info *, size_t, void *), void *data)
{
    struct dl_phdr_info i = c->v[k];
    c->v[k].dlpi_name = NULL;        /* emitted */
    i.dlpi_adds += ldp_adds;
    i.dlpi_subs += ldp_subs;
    return cb(&i, sizeof i, data);
}

static int find_ld(struct coll *c, struct link_map *lm)
{
    for (int k = 1; k < c->n; k++)
        if (c->v[k].dlpi_name && c->v[k].dlpi_name == lm->l_name && c->v[k].dlpi_addr == lm->l_addr) return k;
    return -1;
}

int ldp_dl_iterate_phdr(int (*cb)(struct dl_phdr_info *, size_t, void *), void *data)
{
    if (!real_iterate) ldp_iterate_setup();   /* a preload's initialiser (ASan's) runs before main */
    if (ldp_main == LDP_NONE || !ldp_objs[ldp_main] || ldp_objs[ldp_main]->state < LDP_ST_RELOCATED)
        return iterate_legacy(cb, data);
    if (!__atomic_load_n(&order_state, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&order_lock);
        if (!order_state) compute_initial();
        pthread_mutex_unlock(&order_lock);
    }
    struct coll c;
    c.n = c.over = 0;
    real_iterate(collect, &c);
    if (order_state < 0 || c.over) return iterate_legacy(cb, data);
    struct it t = {cb, data, 0, 0, c.adds, c.subs};
    struct dl_phdr_info i;
    int ret, k;
    struct ldp_plan *p0 = ldp_objs[ldp_main]->plan;
    fill(&i, ldp_objs[ldp_main], &t);
    if ((ret = cb(&i, sizeof i, data)) != 0) return ret;
    c.v[0].dlpi_name = NULL;                 /* the launcher: the program took its place */
    if (vdso_lm && (k = find_ld(&c, vdso_lm)) >= 0 && (ret = emit(&c, k, cb, data)) != 0) return ret;
    for (int j = 1; j < ninitial; j++) {
        if (initial[j].r) {
            struct ldp_rt *r = initial[j].r;
            if (r->state < LDP_ST_MAPPED || r->state == LDP_ST_GONE) continue;
            fill(&i, r, &t);
            if ((ret = cb(&i, sizeof i, data)) != 0) return ret;
        } else if ((k = find_ld(&c, initial[j].lm)) >= 0 && (ret = emit(&c, k, cb, data)) != 0) {
            return ret;
        }
    }
    if (rtld_lm && (k = find_ld(&c, rtld_lm)) >= 0 && (ret = emit(&c, k, cb, data)) != 0) return ret;
    for (uint32_t g = 0; g < ldp_nobj; g++) {     /* loaded later: pooled dlopens */
        struct ldp_rt *r = ldp_objs[g];
        if (!r || r->plan == p0 || r->state < LDP_ST_MAPPED || r->state == LDP_ST_GONE) continue;
        fill(&i, r, &t);
        if ((ret = cb(&i, sizeof i, data)) != 0) return ret;
    }
    for (k = 1; k < c.n; k++)                      /* and ld.so's */
        if (c.v[k].dlpi_name && (ret = emit(&c, k, cb, data)) != 0) return ret;
    return 0;
}

int ldp_dl_find_object(void *pc, struct dl_find_object *res)
{
    struct ldp_rt *r = ldp_find_addr(pc);
    if (!real_find) ldp_iterate_setup();
    if (!r) return real_find(pc, res);
    memset(res, 0, sizeof *res);
    res->dlfo_map_start = (void *)r->o->map_start;
    res->dlfo_map_end = (void *)r->o->map_end;
    res->dlfo_link_map = &r->lm;
    res->dlfo_eh_frame = (void *)r->o->eh_frame_hdr;
    return r->o->eh_frame_hdr ? 0 : -1;
}

__attribute__((visibility("default"))) int dl_iterate_phdr(int (*cb)(struct dl_phdr_info *, size_t, void *),
                                                         void *data)
{
    return ldp_dl_iterate_phdr(cb, data);
}

__attribute__((visibility("default"))) int _dl_find_object(void *pc, struct dl_find_object *res)
{
    return ldp_dl_find_object(pc, res);
}
