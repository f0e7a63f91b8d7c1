/* The order finalisers run in, as glibc's _dl_sort_maps (the DFS
 * algorithm, glibc 2.35+) gives it to _dl_fini at exit and to
 * _dl_close_worker at dlclose: a reverse postorder of a depth-first walk
 * that starts from the last loaded object and goes backwards, following
 * each object's l_initfini (a dlopen root and the program: their whole
 * breadth-first closure; any other object: its own DT_NEEDED).  So objects
 * come in load order, each before what it needs.  This is not the reverse
 * of the init order once dlopen is involved: an object loaded later, with
 * nothing depending on it, is finalised after the earlier ones. */
#include "ldp.h"
#include <stdlib.h>
#include <string.h>

static int live(uint32_t i)
{
    struct ldp_rt *x = ldp_objs[i];
    return x && x->state >= LDP_ST_MAPPED && x->state != LDP_ST_GONE;
}

static int is_root(struct ldp_rt *x)
{
    return x->index == ldp_main || (x->dlopened && ldp_objs[x->plan->first_index] == x);
}

/* the live object DT_NEEDED `need` of x names: the first in load order,
 * as compute_deps (objects.c) matches them */
static uint32_t needed(const char *need, uint32_t nobj)
{
    for (uint32_t i = 0; i < nobj; i++) {
        struct ldp_rt *r = ldp_objs[i];
        if (!live(i)) continue;
        const char *b = strrchr(r->path, '/');
        if ((r->soname && strcmp(r->soname, need) == 0) || strcmp(b ? b + 1 : r->path, need) == 0 ||
            strcmp(r->name, need) == 0)
            return i;
    }
    return LDP_NONE;
}

struct walk { uint8_t *seen; uint32_t *out, head, nobj; };

static void dfs(struct walk *w, uint32_t i)
{
    if (w->seen[i] || !live(i)) return;
    w->seen[i] = 1;
    struct ldp_rt *x = ldp_objs[i];
    if (is_root(x)) {
        ldp_rt_deps(x);
        for (uint32_t k = 1; k < x->ndeps; k++)
            if (x->deps[k] < w->nobj && x->deps[k] != ldp_main) dfs(w, x->deps[k]);
    } else if (x->o->l_ld && x->strtab) {
        for (const Elf64_Dyn *d = (const Elf64_Dyn *)x->o->l_ld; d->d_tag != DT_NULL; d++) {
            if (d->d_tag != DT_NEEDED) continue;
            uint32_t j = needed(x->strtab + d->d_un.d_val, w->nobj);
            if (j != LDP_NONE && j != ldp_main) dfs(w, j);
        }
    }
    w->out[--w->head] = i;
}

/* 0 when no dlopen'ed object is live: then the reverse init order is it */
uint32_t ldp_fini_order(uint32_t nobj, uint32_t *out)
{
    /* only start-up objects: the reverse of their init order is the same
     * (the plan's init order is glibc's), and costs no walk over .dynstr
     * pages nothing else touches */
    int dl = 0;
    for (uint32_t i = 0; i < nobj && !dl; i++) dl = live(i) && ldp_objs[i]->dlopened;
    if (!dl) return 0;
    uint32_t n = 0;
    for (uint32_t i = 0; i < nobj; i++) n += live(i);
    struct walk w = {calloc(nobj ? nobj : 1, 1), out, n, nobj};
    for (uint32_t i = nobj; i-- > 0;) dfs(&w, i);
    free(w.seen);
    return n;
}
