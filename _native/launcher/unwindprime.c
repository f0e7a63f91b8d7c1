/* A pooled libgcc_s is a second copy next to the one glibc dlopens itself
 * for thread cancellation (pthread_cancel, pthread_exit): that copy's
 * _Unwind_ForcedUnwind then calls personality routines bound to the pooled
 * copy (__gcc_personality_v0, libstdc++'s __gxx_personality_v0), whose
 * _Unwind_SetGR reads the pooled copy's dwarf_reg_size_table -- filled only
 * when that copy's own unwinder first runs; all zero, it aborts.  Running
 * the pooled _Unwind_Backtrace once (stopping at the first frame) fills it.
 * The two copies are the same file, so their contexts agree otherwise. */
#include "ldp.h"
#include <string.h>
#include <unwind.h>

static _Unwind_Reason_Code stop_at_once(struct _Unwind_Context *c, void *arg)
{
    (void)c, (void)arg;
    return _URC_END_OF_STACK;
}

void ldp_unwind_prime(struct ldp_plan *p)
{
    for (uint32_t i = 0; i < p->h->nobj; i++) {
        struct ldp_rt *r = ldp_objs[p->first_index + i];
        if (!r->soname || strcmp(r->soname, "libgcc_s.so.1")) continue;
        const Elf64_Sym *s = ldp_lookup_in(r, "_Unwind_Backtrace", "GCC_3.3");
        if (!s || !s->st_value) continue;
        ((_Unwind_Reason_Code (*)(_Unwind_Trace_Fn, void *))(r->o->l_addr + s->st_value))(stop_at_once, NULL);
    }
}
