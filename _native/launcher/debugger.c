/* Debugger visibility: gdb learns about shared objects from ld.so's
 * r_debug list and its breakpoint at r_brk.  Pooled objects get a list of
 * their own, chained behind ld.so's as one more link-map namespace
 * (r_debug_extended.r_next, r_version 2: what glibc does for dlmopen), so
 * ld.so's own list, which it walks with its private link_map fields, is
 * never touched.  After each change the r_brk hook is called, as ld.so does. */
#include "ldp.h"
#include <stdlib.h>

static struct r_debug_extended ours;
static struct link_map *lms;
static uint32_t nlms;
static int linked;

void ldp_gdb_sync(void)
{
    /* ld.so's, bound when the launcher is loaded (no dlsym per start) */
    struct r_debug_extended *rd = (struct r_debug_extended *)&_r_debug;
    ldp_objects_relink();      /* the same moments change the handles' chain */
    if (!rd || !rd->base.r_brk) return;
    if (!linked) {
        ours.base.r_version = 2;
        ours.base.r_ldbase = rd->base.r_ldbase;
        ours.base.r_brk = rd->base.r_brk;
        struct r_debug_extended *last = rd;
        while (last->r_next) last = last->r_next;
        last->r_next = &ours;
        if (rd->base.r_version < 2) rd->base.r_version = 2;
        linked = 1;
    }
    void (*brk)(void) = (void (*)(void))ours.base.r_brk;
    ours.base.r_state = RT_ADD;
    brk();
    /* a fresh array each time: a debugger may be reading the old one */
    struct link_map *n = calloc(ldp_nobj ? ldp_nobj : 1, sizeof *n), *prev = NULL, *first = NULL;
    uint32_t k = 0;
    for (uint32_t i = 0; i < ldp_nobj; i++) {
        struct ldp_rt *r = ldp_objs[i];
        if (!r || r->state < LDP_ST_MAPPED || r->state == LDP_ST_GONE) continue;
        struct link_map *l = &n[k++];
        l->l_addr = r->o->l_addr;
        l->l_name = (char *)r->path;
        l->l_ld = (Elf64_Dyn *)r->o->l_ld;
        l->l_prev = prev;
        if (prev) prev->l_next = l; else first = l;
        prev = l;
    }
    ours.base.r_map = first;
    ours.base.r_state = RT_CONSISTENT;
    brk();
    (void)lms, (void)nlms;
    lms = n, nlms = k;
}
