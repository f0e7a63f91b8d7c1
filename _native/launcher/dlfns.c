/* The dl* family as pooled code sees it: handles of pooled objects are
 * their ldp_rt records, everything else goes to ld.so.  dlerror keeps one
 * per-thread message across both (ours wins while pending). */
#include "ldp.h"
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct errstate { uint64_t marker; char *dlerr; int pending; };

/* one lock for the pooled-object registry, recursive: initialisers run by
 * dlopen may call dlopen themselves */
static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_done(void) { pthread_mutex_unlock(&lock); }
/* the child's thread has another tid: it may not unlock the parent's
 * recursive mutex (EPERM), it gets a fresh one */
static void fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
    memcpy(&lock, &fresh, sizeof fresh);
}

/* a fork while another thread is inside dlopen must not leave the child
 * with the lock held by a thread it does not have */
void ldp_dl_setup(void) { pthread_atfork(fork_prepare, fork_done, fork_child); }

#define LOCKED(type, call) do { pthread_mutex_lock(&lock); type r_ = call; pthread_mutex_unlock(&lock); return r_; } while (0)

void ldp_set_error(const char *fmt, ...)
{
    struct errstate *e = ldp_tls_errslot();
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    free(e->dlerr);
    e->dlerr = strdup(buf);
    e->pending = 1;
    if (ldp_debug) ldp_note("debug: dlerror: %s", buf);
    (void)dlerror();   /* ld.so's older message is superseded */
}

/* dlerror's text for a load error: ld.so's message without the "symbol
 * lookup error: " a program start would print before it */
static const char *dl_text(const char *err)
{
    return strncmp(err, "symbol lookup error: ", 21) == 0 ? err + 21 : err;
}

static void clear_error(void) { ((struct errstate *)ldp_tls_errslot())->pending = 0; }

char *ldp_dlerror(void)
{
    struct errstate *e = ldp_tls_errslot();
    if (e->pending) {
        e->pending = 0;
        return e->dlerr;
    }
    return dlerror();
}

/* glibc's family stays with ld.so: the same list as loader/resolve.py's
 * GLIBC_SONAMES, plus every libnss_* (not libthread_db: it binds to the
 * program's ps_* functions, so it is pooled) */
static const char *const glibc_family[] = {
    "ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
    "libresolv.so.2", "libmvec.so.1", "libutil.so.1", "libanl.so.1", "libBrokenLocale.so.1",
    "libmemusage.so", "libpcprofile.so", "libc_malloc_debug.so.0", NULL,
};

static int is_glibc(const char *name)
{
    const char *b = strrchr(name, '/');
    b = b ? b + 1 : name;
    if (strncmp(b, "libnss_", 7) == 0) return 1;
    for (int i = 0; glibc_family[i]; i++)
        if (strcmp(b, glibc_family[i]) == 0) return 1;
    return 0;
}

static void *open_plan(struct ldp_plan *p, int mode);

/* The broker plans later dlopens against the lease's scopes: a local
 * object made global must be global there too, or a library that needs
 * one of its symbols is refused.  Asking for it again with RTLD_GLOBAL
 * is how the broker hears it (an empty plan: nothing new to map). */
static void tell_promotion(const char *file, struct ldp_rt *req, int mode)
{
    if (ldp_debug_mode || ldp_broker_fd < 0) return;
    char err[512];
    size_t len;
    int unserved = 0;
    void *buf = ldp_broker_acquire_library(file, req, mode & ~RTLD_NOLOAD, &len, &unserved, err, sizeof err);
    if (!buf) {
        if (ldp_debug) ldp_note("debug: dlopen(%s, RTLD_GLOBAL): the broker was not told: %s", file, err);
        return;
    }
    struct ldp_plan p;
    if (ldp_plan_check(&p, buf, len, 0, err, sizeof err) == 0 && p.h->nobj)
        ldp_broker_release(p.h->lease, p.first_index, p.h->nobj);   /* not ours to map twice */
    free(buf);
}

static void *dlopen_locked(const char *file, int mode, void *caller)
{
    clear_error();
    if (!file) return ldp_main != LDP_NONE ? (void *)ldp_objs[ldp_main] : dlopen(file, mode);
    if (is_glibc(file)) return dlopen(file, mode);
    struct ldp_rt *r = ldp_find_name(file);
    if (r) {
        r->refcount++;
        if ((mode & RTLD_GLOBAL) && !r->global) {
            /* glibc's add_to_global: the object's whole search list */
            ldp_rt_deps(r);
            for (uint32_t k = 0; k < r->ndeps; k++) ldp_objs[r->deps[k]]->global = 1;
            tell_promotion(file, ldp_find_addr(caller), mode);
        }
        if (mode & RTLD_NODELETE) r->nodelete = 1;
        return r;
    }
    if (mode & RTLD_NOLOAD) return dlopen(file, mode);
    if (ldp_debug_mode || ldp_broker_fd < 0) {
        if (ldp_debug) ldp_note("note: dlopen(%s) goes to ld.so (no broker in --plan mode)", file);
        return dlopen(file, mode);
    }
    struct ldp_rt *req = ldp_find_addr(caller);
    char err[512];
    size_t len;
    int unserved = 0;
    void *buf = ldp_broker_acquire_library(file, req, mode, &len, &unserved, err, sizeof err);
    if (!buf) {
        if (unserved < 0) {
            ldp_note("note: dlopen(%s) goes to ld.so: %s", file, err);
            return dlopen(file, mode);
        }
        ldp_set_error("%s", dl_text(err));
        return NULL;
    }
    struct ldp_plan *p = malloc(sizeof *p);
    if (ldp_plan_check(p, buf, len, 0, err, sizeof err) < 0) {
        ldp_set_error("%s: bad plan from the broker: %s", file, err);
        free(p);
        return NULL;
    }
    if (p->h->nobj == 0) {
        /* the lease already holds it: loaded under another name, or
         * dlclose()d while no broker heard of it (a reclaimed lease names
         * every object it ever had): the old plan is still valid */
        free(p);
        r = ldp_find_name(file);
        if (r) {
            r->refcount++;
            return r;
        }
        r = ldp_find_unloaded(file);
        if (!r) { ldp_set_error("%s: cannot open shared object file", file); return NULL; }
        return open_plan(r->plan, mode);
    }
    return open_plan(p, mode);
}

static void *open_plan(struct ldp_plan *p, int mode)
{
    char err[512];
    for (uint32_t i = 0; i < p->h->nglibc; i++)
        if (!dlopen(ldp_str(p, p->glibc[i]), RTLD_NOW | RTLD_GLOBAL)) {
            ldp_set_error("%s", dlerror());
            return NULL;
        }
    ldp_objects_add(p);
    int mapped = ldp_map_plan(p, ldp_pool_fd, err, sizeof err) == 0;
    /* RTLD_NOW: a function nobody defines fails the dlopen, not the call */
    ldp_dlopen_now = (mode & RTLD_NOW) != 0;
    int ok = mapped && ldp_resolve_imports(p, err, sizeof err) == 0 && ldp_tls_assign_static(p, err, sizeof err) == 0 &&
             ldp_apply_fixups(p, err, sizeof err) == 0 && ldp_tls_install(p, err, sizeof err) == 0;
    ldp_dlopen_now = 0;
    if (!ok) {
        ldp_set_error("%s", dl_text(err));
        for (uint32_t i = 0; i < p->h->nobj; i++) {
            if (mapped) ldp_unmap(ldp_objs[p->first_index + i]);
            ldp_objs[p->first_index + i]->state = LDP_ST_GONE;
        }
        /* as after a dlclose: the lease forgets them, so that a later
         * dlopen is planned afresh (against the scopes it will have then) */
        if (p->h->nobj) ldp_broker_release(p->h->lease, p->first_index, p->h->nobj);
        return NULL;
    }
    ldp_protect_plan(p);
    struct ldp_rt *root = ldp_objs[p->first_index];
    /* refcount is glibc's l_direct_opencount: dependencies stay loaded
     * through the objects that need them, not through a count */
    for (uint32_t i = 0; i < p->h->nobj; i++) {
        struct ldp_rt *r = ldp_objs[p->first_index + i];
        r->dlopened = 1;
        r->global = (mode & RTLD_GLOBAL) != 0;
        r->refcount = 0;
        r->nodelete = (r->o->flags & LDP_OBJ_NODELETE) != 0;
    }
    root->refcount = 1;
    if (mode & RTLD_NODELETE) root->nodelete = 1;
    ldp_gdb_sync();
    ldp_run_inits(p, ldp_argc, ldp_argv, environ);
    return root;
}

static void *search(struct ldp_rt *caller_after, struct ldp_rt *scope_of, const char *name, const char *ver,
                    struct ldp_rt **found)
{
    if (scope_of) {
        ldp_rt_deps(scope_of);
        for (uint32_t k = 0; k < scope_of->ndeps; k++) {
            struct ldp_rt *r = ldp_objs[scope_of->deps[k]];
            if (r->state == LDP_ST_GONE) continue;
            const Elf64_Sym *s = ldp_lookup_in(r, name, ver);
            if (s) { *found = r; return ldp_sym_value(r, s); }
        }
        return NULL;
    }
    for (uint32_t i = caller_after ? caller_after->index + 1 : 0; i < ldp_nobj; i++) {
        struct ldp_rt *r = ldp_objs[i];
        if (!r || r->state < LDP_ST_MAPPED || r->state == LDP_ST_GONE || !r->global) continue;
        const Elf64_Sym *s = ldp_lookup_in(r, name, ver);
        if (s) { *found = r; return ldp_sym_value(r, s); }
    }
    return NULL;
}

static void *do_sym(void *h, const char *name, const char *ver, void *ret)
{
    struct ldp_rt *found = NULL, *r = NULL;
    void *a = NULL;
    clear_error();
    if (h == RTLD_DEFAULT) {
        a = search(NULL, NULL, name, ver, &found);
    } else if (h == RTLD_NEXT) {
        struct ldp_rt *caller = ldp_find_addr(ret);
        if (!caller) return ver ? dlvsym(h, name, ver) : dlsym(h, name);
        a = search(caller, NULL, name, ver, &found);
        if (!found) h = RTLD_DEFAULT;
    } else if ((r = ldp_from_handle(h)) != NULL) {
        a = (r->o->flags & LDP_OBJ_MAIN) ? search(NULL, NULL, name, ver, &found) : search(NULL, r, name, ver, &found);
        if (!found) h = RTLD_DEFAULT;
    }
    if (found) return a;
    /* pooled code's own pointers to a glibc function are its stub */
    a = ldp_slot_identity(ver ? dlvsym(h, name, ver) : dlsym(h, name));
    if (!a && r) {
        (void)dlerror();
        ldp_set_error("%s: undefined symbol: %s%s%s", r->name[0] ? r->name : ldp_progname, name, ver ? ", version " : "", ver ? ver : "");
    }
    return a;
}

void *ldp_dlsym(void *h, const char *name) { LOCKED(void *, do_sym(h, name, NULL, __builtin_return_address(0))); }

void *ldp_dlvsym(void *h, const char *name, const char *version)
{
    LOCKED(void *, do_sym(h, name, version, __builtin_return_address(0)));
}

/* What glibc's _dl_close_worker keeps: objects of the program's start,
 * objects with an open handle or NODELETE, and everything those need. */
static uint8_t *still_used(uint32_t nobj)
{
    uint8_t *used = calloc(nobj ? nobj : 1, 1);
    for (uint32_t i = 0; i < nobj; i++) {
        struct ldp_rt *x = ldp_objs[i];
        if (!x || x->state < LDP_ST_MAPPED || x->state == LDP_ST_GONE) continue;
        /* start-up objects need only start-up objects: no scope to walk */
        if (!x->dlopened) used[i] = 1;
        if (!x->dlopened || (x->refcount == 0 && !x->nodelete)) continue;
        ldp_rt_deps(x);
        for (uint32_t k = 0; k < x->ndeps; k++)
            if (x->deps[k] < nobj) used[x->deps[k]] = 1;   /* deps: the whole closure */
    }
    return used;
}

/* The broker drops the unloaded objects from the lease (its counts fall,
 * and a later dlopen of the same library plans it again). */
static void release_to_broker(const uint8_t *gone, uint32_t nobj)
{
    for (uint32_t i = 0; i < nobj;) {
        if (!gone[i]) { i++; continue; }
        uint32_t j = i;
        while (j < nobj && gone[j] && ldp_objs[j]->plan->h->lease == ldp_objs[i]->plan->h->lease) j++;
        ldp_broker_release(ldp_objs[i]->plan->h->lease, i, j - i);
        i = j;
    }
}

/* glibc marks a dlopen'ed object NODELETE once a lookup binds to a
 * STB_GNU_UNIQUE symbol it defines (dl-lookup.c, do_lookup_unique): C++
 * inline-function statics and template static members, so most C++
 * plugins and libstdc++ stay loaded.  Such a symbol is always reached
 * through the GOT, so defining one counts as bound.  Checked only when
 * dlclose would unload the object: dynsym pages nothing else reads. */
static int keeps_unique(struct ldp_rt *x)
{
    if (x->unique_checked) return x->nodelete;
    x->unique_checked = 1;
    uint32_t n = x->symtab ? ldp_rt_nsyms(x) : 0;
    for (uint32_t i = 1; i < n; i++)
        if (ELF64_ST_BIND(x->symtab[i].st_info) == STB_GNU_UNIQUE && x->symtab[i].st_shndx != SHN_UNDEF)
            return x->nodelete = 1;
    return x->nodelete;
}

/* The objects dlclose unloads now (1 per global index): dlopen'ed, live,
 * not kept by still_used, nor NODELETE through a unique symbol (which
 * keeps what it needs too, hence the second round). */
static uint8_t *to_unload(uint32_t nobj, uint32_t *count)
{
    for (;;) {
        uint8_t *used = still_used(nobj), *gone = calloc(nobj ? nobj : 1, 1);
        int again = 0;
        *count = 0;
        for (uint32_t i = 0; i < nobj; i++) {
            struct ldp_rt *x = ldp_objs[i];
            if (!x || !x->dlopened || used[i] || x->state < LDP_ST_MAPPED || x->state == LDP_ST_GONE) continue;
            if (keeps_unique(x)) again = 1;
            else gone[i] = 1, ++*count;
        }
        free(used);
        if (!again) return gone;
        free(gone);
    }
}

static int dlclose_locked(void *h)
{
    struct ldp_rt *r = ldp_from_handle(h);
    clear_error();
    if (!r) return dlclose(h);
    if (r->state == LDP_ST_GONE || (r->dlopened && r->refcount <= 0)) {
        ldp_set_error("shared object not open");
        return -1;
    }
    if (r->refcount > 0) r->refcount--;
    if (r->refcount > 0 || !r->dlopened || r->nodelete) return 0;
    uint32_t nobj = ldp_nobj, n;    /* finalisers may dlopen: newer objects are not ours */
    uint8_t *gone = to_unload(nobj, &n);
    /* finalisers in the order _dl_close_worker runs them: its sorted
     * namespace, filtered (finiorder.c) */
    uint32_t *order = malloc(sizeof *order * (nobj ? nobj : 1));
    uint32_t norder = n && order ? ldp_fini_order(nobj, order) : 0;
    for (uint32_t k = 0; k < norder; k++)
        if (gone[order[k]]) ldp_run_finis_obj(ldp_objs[order[k]]);
    free(order);
    /* a finaliser may have dlopened or dlclosed: only what is still ours */
    for (uint32_t i = 0; i < nobj; i++) {
        struct ldp_rt *x = ldp_objs[i];
        if (!gone[i]) continue;
        if (x->state == LDP_ST_GONE) { gone[i] = 0; continue; }
        ldp_unmap(x);
        x->state = LDP_ST_GONE;
        ldp_subs++;
    }
    release_to_broker(gone, nobj);
    free(gone);
    ldp_gdb_sync();
    return 0;
}

int ldp_dladdr(const void *addr, Dl_info *info) { return ldp_dladdr1(addr, info, NULL, 0); }

int ldp_dladdr1(const void *addr, Dl_info *info, void **extra, int flags)
{
    struct ldp_rt *r = ldp_find_addr(addr);
    if (!r) {
        /* a glibc function's stub: what glibc knows of the function */
        const void *t = ldp_slot_target(addr);
        int rc = extra ? dladdr1(t, info, extra, flags) : dladdr(t, info);
        if (rc && t != addr && info->dli_saddr == t) info->dli_saddr = (void *)addr;
        return rc;
    }
    const Elf64_Sym *s = ldp_nearest(r, (uint64_t)addr);
    info->dli_fname = (r->o->flags & LDP_OBJ_MAIN) ? (ldp_argv ? ldp_argv[0] : r->path) : r->name;
    info->dli_fbase = (void *)r->o->map_start;
    info->dli_sname = s ? r->strtab + s->st_name : NULL;
    info->dli_saddr = s ? (void *)(r->o->l_addr + s->st_value) : NULL;
    if (extra) {
        if (flags == RTLD_DL_LINKMAP) *extra = &r->lm;
        else if (flags == RTLD_DL_SYMENT) *extra = (void *)s;
    }
    return 1;
}

int ldp_dlinfo(void *h, int req, void *arg)
{
    struct ldp_rt *r = ldp_from_handle(h);
    clear_error();
    if (!r) return dlinfo(h, req, arg);
    switch (req) {
    case RTLD_DI_LINKMAP: *(struct link_map **)arg = &r->lm; return 0;
    case RTLD_DI_LMID: *(Lmid_t *)arg = LM_ID_BASE; return 0;
    case RTLD_DI_ORIGIN: {
        const char *s = strrchr(r->path, '/');
        size_t n = s ? (size_t)(s - r->path) : 0;
        memcpy(arg, r->path, n);
        ((char *)arg)[n] = 0;
        return 0;
    }
    case RTLD_DI_TLS_MODID: *(size_t *)arg = (r->o->tls_tpoff || r->o->tls_memsz) ? r->o->tls_modid : 0; return 0;
    case RTLD_DI_TLS_DATA: *(void **)arg = ldp_tls_block(r); return 0;
    case RTLD_DI_SERINFOSIZE: return ldp_serinfo(r, arg, 1);
    case RTLD_DI_SERINFO: return ldp_serinfo(r, arg, 0);
    default:
        ldp_set_error("dlinfo: request %d is not supported for pooled objects", req);
        return -1;
    }
}

void *ldp_dlopen(const char *file, int mode) { LOCKED(void *, dlopen_locked(file, mode, __builtin_return_address(0))); }

int ldp_dlclose(void *h) { LOCKED(int, dlclose_locked(h)); }
