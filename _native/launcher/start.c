/* Initialisation, finalisation and the program's start: the libraries'
 * initialisers run in the plan's (glibc's) order before the program's entry;
 * the program's __libc_start_main is ours, and registers the whole fini
 * sequence with __cxa_atexit where _dl_fini sits natively: after the
 * libraries' constructors registered theirs, before the program's. */
#include "ldp.h"
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <unistd.h>

extern int __cxa_atexit(void (*fn)(void *), void *arg, void *dso);

int ldp_argc;
char **ldp_argv, **ldp_envp;
static uint32_t *seq, nseq, capseq;   /* objects in the order they were initialised */

typedef void (*initfn)(int, char **, char **);

static void call_array(uint64_t arr, uint64_t n, int reverse)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t f = ((uint64_t *)arr)[reverse ? n - 1 - i : i];
        if (f && f != (uint64_t)-1) ((initfn)f)(ldp_argc, ldp_argv, environ);
    }
}

static void init_obj(struct ldp_rt *r)
{
    if (r->state >= LDP_ST_INITED) return;
    r->state = LDP_ST_INITED;
    if (nseq == capseq) seq = realloc(seq, sizeof *seq * (capseq = capseq * 2 + 16));
    seq[nseq++] = r->index;
    if (r->o->init) ((initfn)r->o->init)(ldp_argc, ldp_argv, environ);
    call_array(r->o->init_array, r->o->init_count, 0);
}

void ldp_run_inits(struct ldp_plan *p, int argc, char **argv, char **envp)
{
    (void)argc, (void)argv, (void)envp;
    ldp_unwind_prime(p);   /* before any init can cancel a thread */
    if (ldp_main != LDP_NONE && ldp_objs[ldp_main]->plan == p)
        call_array(ldp_objs[ldp_main]->o->preinit_array, ldp_objs[ldp_main]->o->preinit_count, 0);
    for (uint32_t i = 0; i < p->h->ninit; i++) {
        struct ldp_rt *r = ldp_objs[p->init[i]];
        if (!(r->o->flags & LDP_OBJ_MAIN)) init_obj(r);
    }
    /* objects the plan left out of its init order still get initialised */
    for (uint32_t i = p->h->nobj; i-- > 0;) {
        struct ldp_rt *r = ldp_objs[p->first_index + i];
        if (!(r->o->flags & LDP_OBJ_MAIN)) init_obj(r);
    }
}

void ldp_run_finis_obj(struct ldp_rt *r)
{
    if (r->state != LDP_ST_INITED) return;
    r->state = LDP_ST_FINISHED;
    call_array(r->o->fini_array, r->o->fini_count, 1);
    if (r->o->fini) ((void (*)(void))r->o->fini)();
}

static void fini_all(void *unused)
{
    (void)unused;
    /* glibc's _dl_fini order, which differs from the reverse of `seq`
     * once dlopen'ed objects are still loaded (finiorder.c) */
    uint32_t nobj = ldp_nobj, *order = malloc(sizeof *order * (nobj ? nobj : 1));
    uint32_t n = order ? ldp_fini_order(nobj, order) : 0;
    for (uint32_t k = 0; k < n; k++) ldp_run_finis_obj(ldp_objs[order[k]]);
    free(order);
    for (uint32_t k = nseq; k-- > 0;) ldp_run_finis_obj(ldp_objs[seq[k]]);   /* anything left */
}

int ldp_libc_start_main(int (*main)(int, char **, char **), int argc, char **argv,
                        void (*init)(int, char **, char **), void (*fini)(void),
                        void (*rtld_fini)(void), void *stack_end)
{
    (void)fini, (void)rtld_fini, (void)stack_end;
    ldp_argc = argc;
    ldp_argv = argv;
    __cxa_atexit(fini_all, NULL, NULL);
    struct ldp_rt *m = ldp_main != LDP_NONE ? ldp_objs[ldp_main] : NULL;
    if (init) {
        /* a pre-2.34 program: its __libc_csu_init runs DT_INIT and init_array */
        if (m && m->state < LDP_ST_INITED) {
            m->state = LDP_ST_INITED;
            if (nseq == capseq) seq = realloc(seq, sizeof *seq * (capseq = capseq * 2 + 16));
            seq[nseq++] = m->index;
        }
        init(argc, argv, environ);
    } else if (m) {
        init_obj(m);
    }
    exit(main(argc, argv, environ));
}

void ldp_set_identity(const char *path)
{
    /* dlsym, not a reference: a GOT slot of the launcher's own would point
     * at what the program may COPY (coreutils do), and repointing it costs
     * an mprotect pair of the launcher's RELRO at every start */
    char **pin = dlsym(RTLD_DEFAULT, "program_invocation_name");
    char **psn = dlsym(RTLD_DEFAULT, "program_invocation_short_name");
    const char *a0 = ldp_argv[0] ? ldp_argv[0] : path;
    const char *b = strrchr(a0, '/');
    if (pin) *pin = (char *)a0;
    if (psn) *psn = (char *)(b ? b + 1 : a0);
    /* comm is the base name of the executed file, as execve sets it */
    const char *c = strrchr(path, '/');
    prctl(PR_SET_NAME, c ? c + 1 : path, 0, 0, 0);
}

/* The kernel's /proc/PID/cmdline (ps, pgrep -f, psutil, node's
 * process.title) is the bytes exec left from the first argument string to
 * the end of the last: the launcher's own words came first.  The program's
 * strings move to the start of that area and the launcher's share becomes
 * NULs, as a title setter leaves it.  Strings the launcher still needs that
 * lay in the area are copied first (*keep[k]). */
void ldp_move_args(char **argv, int first, int argc, const char **keep[], int nkeep)
{
    if (first <= 0 || first >= argc) return;
    for (int k = 0; k + 1 < argc; k++)
        if (argv[k + 1] != argv[k] + strlen(argv[k]) + 1) return;   /* not exec's layout */
    char *start = argv[0], *from = argv[first];
    char *end = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
    for (int k = 0; k < nkeep; k++)
        if (*keep[k] && *keep[k] >= start && *keep[k] < end) *keep[k] = strdup(*keep[k]);
    size_t n = end - from, shift = from - start;
    memmove(start, from, n);
    memset(start + n, 0, shift);
    for (int k = first; k < argc; k++) argv[k] -= shift;
}

/* Build argc/argv/envp/auxv as the kernel would for the program, below the
 * current stack frame, and jump to its entry. */
void ldp_start(int argc, char **argv, char **envp0, const char *execfn)
{
    struct ldp_rt *m = ldp_objs[ldp_main];
    char **env = environ;
    size_t envc = 0, naux = 0;
    while (env[envc]) envc++;
    char **e = envp0;
    while (*e) e++;
    Elf64_auxv_t *aux = (Elf64_auxv_t *)(e + 1);
    while (aux[naux].a_type != AT_NULL) naux++;
    size_t words = 1 + argc + 1 + envc + 1 + 2 * (naux + 1);
    uint64_t *sp = __builtin_alloca(words * 8 + 64);
    sp = (uint64_t *)(((uint64_t)sp + 15) & ~15ul);
    size_t k = 0;
    sp[k++] = argc;
    for (int i = 0; i < argc; i++) sp[k++] = (uint64_t)argv[i];
    sp[k++] = 0;
    for (size_t i = 0; i < envc; i++) sp[k++] = (uint64_t)env[i];
    sp[k++] = 0;
    for (size_t i = 0; i < naux; i++) {
        uint64_t t = aux[i].a_type, v = aux[i].a_un.a_val;
        if (t == AT_PHDR) v = m->o->phdr;
        else if (t == AT_PHNUM) v = m->o->phnum;
        else if (t == AT_ENTRY) v = m->o->entry;
        else if (t == AT_EXECFN) v = (uint64_t)execfn;
        /* glibc's getauxval reads the original vector: the program's view too */
        aux[i].a_un.a_val = v;
        sp[k++] = t;
        sp[k++] = v;
    }
    sp[k++] = AT_NULL;
    sp[k++] = 0;
    ldp_jump(sp, (void *)m->o->entry);
}
