/* What unwinders and iterators see: dl_iterate_phdr reports the program
 * first (in the launcher's place, named "" as natively), then ld.so's
 * objects, then the pooled libraries; _dl_find_object knows pooled ranges
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

int ldp_dl_iterate_phdr(int (*cb)(struct dl_phdr_info *, size_t, void *), void *data)
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
