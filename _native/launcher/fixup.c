/* Per-process fixups: resolve a plan's imports (libc's own from the plan's
 * st_values when the libc matches, else launcher overrides first, then
 * glibc's family through dlvsym), then run the per-record loop over
 * the small ldp_fix vocabulary, objects in reverse load order as ld.so
 * relocates.  COPY relocations of glibc data also repoint glibc's own GOT
 * slots at the program's copy, which is what ld.so's interposition does. */
#include "ldp.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const struct { const char *name; void *fn; } overrides[] = {
    {"__libc_start_main", (void *)ldp_libc_start_main},
    {"dlopen", (void *)ldp_dlopen},
    {"dlsym", (void *)ldp_dlsym},
    {"dlvsym", (void *)ldp_dlvsym},
    {"dlclose", (void *)ldp_dlclose},
    {"dlerror", (void *)ldp_dlerror},
    {"dladdr", (void *)ldp_dladdr},
    {"dladdr1", (void *)ldp_dladdr1},
    {"dlinfo", (void *)ldp_dlinfo},
    {"dl_iterate_phdr", (void *)ldp_dl_iterate_phdr},
    {"_dl_find_object", (void *)ldp_dl_find_object},
    {"__tls_get_addr", (void *)ldp_tls_get_addr},
    {"readlink", (void *)ldp_readlink},
    {"readlinkat", (void *)ldp_readlinkat},
    {"realpath", (void *)ldp_realpath},
    {"__readlink_chk", (void *)ldp_readlink_chk},
    {"__readlinkat_chk", (void *)ldp_readlinkat_chk},
    {"__realpath_chk", (void *)ldp_realpath_chk},
    {"open", (void *)ldp_open},
    {"open64", (void *)ldp_open64},
    {"openat", (void *)ldp_openat},
    {"openat64", (void *)ldp_openat64},
    {"__open_2", (void *)ldp_open_2},
    {"__open64_2", (void *)ldp_open64_2},
    {"__openat_2", (void *)ldp_openat_2},
    {"__openat64_2", (void *)ldp_openat64_2},
    {"fopen", (void *)ldp_fopen},
    {"fopen64", (void *)ldp_fopen64},
    {"execve", (void *)ldp_execve},
    {"execv", (void *)ldp_execv},
    {"execvp", (void *)ldp_execvp},
    {"execvpe", (void *)ldp_execvpe},
    {"execl", (void *)ldp_execl},
    {"execlp", (void *)ldp_execlp},
    {"execle", (void *)ldp_execle},
    {"posix_spawn", (void *)ldp_posix_spawn},
    {"posix_spawnp", (void *)ldp_posix_spawnp},
    {"backtrace_symbols", (void *)ldp_backtrace_symbols},
    {"backtrace_symbols_fd", (void *)ldp_backtrace_symbols_fd},
};

void *ldp_override(const char *name)
{
    /* every import of every object comes here: most leave at once */
    if (!strchr("_bdefopr", name[0]) || !name[0]) return NULL;
    if ((name[0] == 'e' && strncmp(name, "exec", 4)) || (name[0] == 'p' && strncmp(name, "posix_spawn", 11)))
        return NULL;   /* pthread_*, printf...: many imports start so */
    for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++)
        if (overrides[i].name[0] == name[0] && overrides[i].name[1] == name[1] && strcmp(overrides[i].name, name) == 0)
            return overrides[i].fn;
    return NULL;
}

/* ---- lazily failing stubs: a non-BIND_NOW object may import a function
 * nobody defines and still run, as long as it never calls it ---- */
struct lazy_miss { struct ldp_plan *p; uint32_t imp; const char *obj; };

static void lazy_fail(struct lazy_miss *m)
{
    ldp_die(127, "symbol lookup error: %s: undefined symbol: %s", m->obj, ldp_str(m->p, m->p->imp[m->imp].name));
}

static void *lazy_stub(struct ldp_plan *p, uint32_t imp, const char *obj)
{
    static unsigned char *page;
    static size_t used = 4096;
    if (used + 32 > 4096) {
        page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED) return NULL;
        used = 0;
    }
    struct lazy_miss *m = malloc(sizeof *m);
    m->p = p, m->imp = imp, m->obj = obj;
    unsigned char *c = page + used;
    uint64_t a = (uint64_t)m, f = (uint64_t)lazy_fail;
    c[0] = 0x48, c[1] = 0xbf, memcpy(c + 2, &a, 8);            /* movabs $m, %rdi */
    c[10] = 0x48, c[11] = 0xb8, memcpy(c + 12, &f, 8);         /* movabs $lazy_fail, %rax */
    c[20] = 0x48, c[21] = 0x83, c[22] = 0xe4, c[23] = 0xf0;    /* and $-16, %rsp */
    c[24] = 0xff, c[25] = 0xd0;                                /* call *%rax */
    used += 32;
    return c;
}

/* an object as ld.so's messages name it: l_name, argv[0] for the program */
static const char *objname(struct ldp_plan *p, const struct ldp_obj *o)
{
    const char *n = ldp_str(p, o->name);
    return n[0] ? n : ldp_progname;
}

#define MISSING ((uint64_t)1)   /* import sentinel: not found, not weak */

static int bind_now(const struct ldp_obj *o);

/* A slot's value: its import, or for a missing one used only lazily, a
 * stub that fails when called (as ld.so's lazy binding would). */
static uint64_t slot_value(struct ldp_plan *p, const struct ldp_slot *s, char *err, size_t errlen)
{
    uint64_t a = p->imp_addr[s->import];
    if (a != MISSING) return a;
    struct ldp_rt *r = s->obj < ldp_nobj ? ldp_objs[s->obj] : NULL;
    const char *obj = r ? (r->name[0] ? r->name : ldp_progname) : "?";
    if (!(s->flags & LDP_SLOT_BIND_NOW) && !(r && bind_now(r->o))) {
        void *stub = lazy_stub(p, s->import, obj);
        if (stub) return (uint64_t)stub;
    }
    const struct ldp_import *im = &p->imp[s->import];
    snprintf(err, errlen, "symbol lookup error: %s: undefined symbol: %s%s%s", obj, ldp_str(p, im->name),
             im->version != LDP_NONE ? ", version " : "", im->version != LDP_NONE ? ldp_str(p, im->version) : "");
    return 0;
}

/* ---- libc's own imports without dlvsym: l_addr + st_value from the plan,
 * when this process's libc is the one the plan was built from and nothing
 * sits before it in RTLD_DEFAULT but the launcher (whose names the plan
 * builder leaves to dlvsym) ---- */
struct libc_here { int known; uint64_t l_addr, span; };

static struct libc_here *libc_here(void)
{
    static struct libc_here lc;
    if (lc.known) return &lc;
    lc.known = 1;
    /* ld.so's list of the initial namespace, read without dlopen's lock
     * (a few microseconds per start); a libc by another file name is not
     * found: every import then takes dlvsym, which is slower, not wrong */
    struct link_map *m = NULL;
    for (struct link_map *q = _r_debug.r_map; q && !m; q = q->l_next) {
        const char *b = strrchr(q->l_name, '/');
        if (strcmp(b ? b + 1 : q->l_name, "libc.so.6") == 0) m = q;
    }
    if (!m) return &lc;
    /* RTLD_DEFAULT searches in load order: an LD_PRELOAD or /etc/ld.so.preload
     * object before libc could define anything */
    for (struct link_map *q = m->l_prev; q; q = q->l_prev)
        if (q->l_prev && strncmp(q->l_name, "linux-vdso.so", 13) != 0) return &lc;
    const Elf64_Ehdr *e = (const Elf64_Ehdr *)m->l_addr;
    if (memcmp(e->e_ident, ELFMAG, SELFMAG) != 0 || e->e_phentsize != sizeof(Elf64_Phdr)) return &lc;
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(m->l_addr + e->e_phoff);
    uint64_t span = 0;
    for (int i = 0; i < e->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD && ph[i].p_vaddr + ph[i].p_memsz > span) span = ph[i].p_vaddr + ph[i].p_memsz;
    lc.l_addr = m->l_addr;
    lc.span = span;
    return &lc;
}

/* Whether this process's libc has the plan's build-id (read once per libc
 * from its PT_NOTE in memory). */
static int libc_matches(struct ldp_plan *p, struct libc_here *lc)
{
    static uint8_t id[LDP_BUILD_ID_MAX];
    static int idlen = -1;
    if (!lc->span || !p->h->libc_build_id_len) return 0;
    if (idlen < 0) {
        idlen = 0;
        const Elf64_Ehdr *e = (const Elf64_Ehdr *)lc->l_addr;
        const Elf64_Phdr *ph = (const Elf64_Phdr *)(lc->l_addr + e->e_phoff);
        for (int i = 0; i < e->e_phnum && !idlen; i++) {
            if (ph[i].p_type != PT_NOTE) continue;
            const unsigned char *n = (const unsigned char *)(lc->l_addr + ph[i].p_vaddr), *end = n + ph[i].p_memsz;
            while (n + sizeof(Elf64_Nhdr) <= end) {
                const Elf64_Nhdr *nh = (const Elf64_Nhdr *)n;
                const unsigned char *name = n + sizeof *nh, *desc = name + ((nh->n_namesz + 3) & ~3u);
                if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && memcmp(name, "GNU", 4) == 0 &&
                    nh->n_descsz <= LDP_BUILD_ID_MAX && desc + nh->n_descsz <= end) {
                    memcpy(id, desc, nh->n_descsz);
                    idlen = (int)nh->n_descsz;
                    break;
                }
                n = desc + ((nh->n_descsz + 3) & ~3u);
            }
        }
    }
    return idlen && (uint32_t)idlen == p->h->libc_build_id_len && memcmp(id, p->h->libc_build_id, idlen) == 0;
}

/* Is map a before map b in ld.so's list (RTLD_DEFAULT's search order)? */
static int map_before(const struct link_map *a, const struct link_map *b)
{
    for (const struct link_map *q = a ? a->l_next : NULL; q; q = q->l_next)
        if (q == b) return 1;
    return 0;
}

static void *by_name(const struct ldp_plan *p, const struct ldp_import *im, const char *name)
{
    if (im->version == LDP_NONE) return dlsym(RTLD_DEFAULT, name);
    void *a = dlvsym(RTLD_DEFAULT, name, ldp_str(p, im->version));
    if (!ldp_keep_preload && !ldp_hosted_active()) return a;
    /* natively an unversioned definition in an earlier object (an LD_PRELOAD
     * malloc replacement) satisfies malloc@GLIBC_2.2.5; dlvsym treats the
     * version as hidden and skips it: take such a definition, unless it is
     * the launcher's own */
    void *d = dlsym(RTLD_DEFAULT, name);
    struct link_map *ld = NULL, *la = NULL;
    Dl_info i;
    if (!d || d == a || !dladdr1(d, &i, (void **)&ld, RTLD_DL_LINKMAP) || !ld || ld == _r_debug.r_map) return a;
    if (!a) return d;
    if (!dladdr1(a, &i, (void **)&la, RTLD_DL_LINKMAP) || !la) return a;
    return map_before(ld, la) ? d : a;
}

int ldp_resolve_imports(struct ldp_plan *p, char *err, size_t errlen)
{
    uint32_t n = p->h->nimport;
    p->imp_addr = calloc(n ? n : 1, sizeof *p->imp_addr);
    /* an interposer preloaded into the launcher binds glibc's own names in
     * RTLD_DEFAULT: then every import asks dlvsym */
    struct libc_here *lc = libc_here();
    int pre = !ldp_keep_preload && libc_matches(p, lc);
    static int check = -1;
    if (check < 0) check = getenv("LDPOOL_CHECK_IMPORTS") != NULL && strcmp(getenv("LDPOOL_CHECK_IMPORTS"), "0") != 0;
    uint32_t npre = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct ldp_import *im = &p->imp[i];
        const char *name = ldp_str(p, im->name);
        void *a = ldp_override(name);   /* first even for LDP_IMP_LIBC: a plan's list of these may be stale */
        if (!a && pre && (im->flags & LDP_IMP_LIBC) && im->value < lc->span) {
            a = (void *)(lc->l_addr + im->value);
            if (im->flags & LDP_IMP_IFUNC) a = ((void *(*)(void))a)();
            npre++;
            if (check) {
                void *b = by_name(p, im, name);
                if (a != b)
                    ldp_die(127, "LDPOOL_CHECK_IMPORTS: %s%s%s: libc value %p, dlvsym %p", name,
                            im->version != LDP_NONE ? "@" : "", im->version != LDP_NONE ? ldp_str(p, im->version) : "",
                            a, b);
            }
        } else if (!a) {
            a = by_name(p, im, name);
        }
        if (!a && !(im->flags & LDP_IMP_WEAK)) {
            /* decided per fixup: lazily bound calls fail only when made */
            p->imp_addr[i] = MISSING;
            continue;
        }
        p->imp_addr[i] = (uint64_t)a;
    }
    if (ldp_debug) ldp_note("debug: imports: %u of %u from libc values (libc %s)", npre, n,
                            pre ? "matches the plan" : "differs or is not certain: dlvsym");
    /* the epoch's slot table: the stubs pooled code calls glibc through */
    if (ldp_slots_map(p, ldp_pool_fd, err, errlen) < 0) return -1;
    return ldp_slots_fill(p, slot_value, err, errlen);
}

/* ---- COPY of glibc data: repoint glibc's GLOB_DAT/64 slots ---- */
struct copy_move { uint64_t old, size, new; };
struct repoint_ctx { struct copy_move *mv; size_t n; };

/* Which slot of a glibc-family object points into a copied original, and
 * where it must point now (0: none). */
static uint64_t moved(const struct repoint_ctx *c, uint64_t v)
{
    for (size_t k = 0; k < c->n; k++)
        if (v - c->mv[k].old < c->mv[k].size) return c->mv[k].new + (v - c->mv[k].old);
    return 0;
}

/* One object's slots: a first pass finds the RELRO pages that must change,
 * so they are made writable once (one mprotect each way for the span, not
 * two per slot: glibc's stdout, stderr, optind... share a page). */
static int repoint_one(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct repoint_ctx *c = data;
    uint64_t base = info->dlpi_addr, relro_lo = 0, relro_hi = 0;
    const Elf64_Dyn *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const Elf64_Phdr *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_DYNAMIC) dyn = (const void *)(base + ph->p_vaddr);
        /* as ld.so protects it: whole pages only */
        if (ph->p_type == PT_GNU_RELRO)
            relro_lo = (base + ph->p_vaddr) & ~4095ul, relro_hi = (base + ph->p_vaddr + ph->p_memsz) & ~4095ul;
    }
    if (!dyn) return 0;
    uint64_t rela = 0, relasz = 0;
    for (const Elf64_Dyn *d = dyn; d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_RELA) rela = d->d_un.d_ptr;
        if (d->d_tag == DT_RELASZ) relasz = d->d_un.d_val;
    }
    if (!rela) return 0;
    if (rela < base) rela += base;   /* ld.so's own .dynamic is not adjusted */
    const Elf64_Rela *r0 = (const void *)rela, *rend = r0 + relasz / sizeof *r0;
    uint64_t lo = UINT64_MAX, hi = 0;
    int hits = 0;
    for (const Elf64_Rela *r = r0; r < rend; r++) {
        uint32_t t = ELF64_R_TYPE(r->r_info);
        if (t != R_X86_64_GLOB_DAT && t != R_X86_64_64) continue;
        uint64_t slot = base + r->r_offset;
        if (!moved(c, *(uint64_t *)slot)) continue;
        hits = 1;
        if (slot >= relro_lo && slot < relro_hi) {
            if (slot < lo) lo = slot;
            if (slot > hi) hi = slot;
        }
    }
    if (!hits) return 0;
    lo &= ~4095ul, hi = (hi + 4096) & ~4095ul;
    if (lo < hi) mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE);
    for (const Elf64_Rela *r = r0; r < rend; r++) {
        uint32_t t = ELF64_R_TYPE(r->r_info);
        if (t != R_X86_64_GLOB_DAT && t != R_X86_64_64) continue;
        uint64_t *slot = (uint64_t *)(base + r->r_offset), n = moved(c, *slot);
        if (n) *slot = n;
    }
    if (lo < hi) mprotect((void *)lo, hi - lo, PROT_READ);
    return 0;
}

static const struct ldp_obj *owner(struct ldp_plan *p, uint32_t k)
{
    for (uint32_t i = 0; i < p->h->nobj; i++)
        if (k >= p->obj[i].fix_first && k < p->obj[i].fix_first + p->obj[i].fix_count) return &p->obj[i];
    return p->obj;
}

int ldp_dlopen_now;

static int bind_now(const struct ldp_obj *o)
{
    static int env = -1;
    if (env < 0) { const char *e = getenv("LD_BIND_NOW"); env = e && *e; }
    return env || ldp_dlopen_now || (o->flags & LDP_OBJ_BIND_NOW);
}

static uint64_t sym_value(struct ldp_plan *p, uint32_t k, const struct ldp_fix *f, char *err, size_t errlen, int *bad)
{
    uint64_t s = p->imp_addr[f->sym];
    if (s != MISSING) return s;
    const struct ldp_obj *o = owner(p, k);
    const struct ldp_import *im = &p->imp[f->sym];
    if ((im->flags & LDP_IMP_FUNC) && f->type == LDP_FIX_SYM64 && !bind_now(o)) {
        void *stub = lazy_stub(p, f->sym, objname(p, o));
        if (stub) return (uint64_t)stub - f->addend;
    }
    snprintf(err, errlen, "symbol lookup error: %s: undefined symbol: %s%s%s", objname(p, o),
             ldp_str(p, im->name), im->version != LDP_NONE ? ", version " : "",
             im->version != LDP_NONE ? ldp_str(p, im->version) : "");
    *bad = 1;
    return 0;
}

static uint64_t tls_tpoff_of(uint32_t g) { return (uint64_t)ldp_objs[g]->o->tls_tpoff; }

#define RANGE(v, lo, hi, what) do { if ((int64_t)(v) < (lo) || (int64_t)(v) > (hi)) { \
        snprintf(err, errlen, "%s: relocation at %#lx out of range (%s)", ldp_str(p, owner(p, k)->path), f->addr, what); \
        return -1; } } while (0)

static int apply_one(struct ldp_plan *p, uint32_t k, struct copy_move **mv, size_t *nmv, char *err, size_t errlen)
{
    const struct ldp_fix *f = &p->fix[k];
    int bad = 0;
    uint64_t s, v;
    switch (f->type) {
    case LDP_FIX_ABS64: *(uint64_t *)f->addr = f->addend; break;
    case LDP_FIX_SYM64:
        s = sym_value(p, k, f, err, errlen, &bad);
        if (bad) return -1;
        *(uint64_t *)f->addr = s + f->addend;
        break;
    case LDP_FIX_SYM_PC32: case LDP_FIX_SYM32: case LDP_FIX_SYM32S:
        s = sym_value(p, k, f, err, errlen, &bad);
        if (bad) return -1;
        v = s + f->addend;
        if (f->type == LDP_FIX_SYM_PC32) { v -= f->addr; RANGE(v, INT32_MIN, INT32_MAX, "PC32"); }
        else if (f->type == LDP_FIX_SYM32) { if (v > UINT32_MAX) RANGE(1, 0, 0, "32"); }
        else RANGE(v, INT32_MIN, INT32_MAX, "32S");
        *(uint32_t *)f->addr = (uint32_t)v;
        break;
    case LDP_FIX_IRELATIVE: break;   /* second pass */
    case LDP_FIX_DTPMOD: *(uint64_t *)f->addr = ldp_objs[f->sym]->o->tls_modid; break;
    case LDP_FIX_TPOFF: case LDP_FIX_TLSDESC:
        if (!tls_tpoff_of(f->sym)) {
            snprintf(err, errlen, "%s: static TLS access to %s, which has dynamic TLS only",
                     ldp_str(p, owner(p, k)->path), ldp_objs[f->sym]->path);
            return -1;
        }
        if (f->type == LDP_FIX_TPOFF) {
            *(uint64_t *)f->addr = tls_tpoff_of(f->sym) + f->addend;
            break;
        }
        ((uint64_t *)f->addr)[0] = (uint64_t)ldp_tlsdesc_static;
        ((uint64_t *)f->addr)[1] = tls_tpoff_of(f->sym) + f->addend;
        break;
    case LDP_FIX_GLIBC_TPOFF:
        s = sym_value(p, k, f, err, errlen, &bad);
        if (bad) return -1;
        *(uint64_t *)f->addr = s - ldp_tls_tp() + f->addend;
        break;
    case LDP_FIX_COPY:
        if (f->sym == LDP_NONE) {
            memcpy((void *)f->addr, (void *)f->aux, f->addend);
            break;
        }
        /* fall through: a copy of glibc data moves glibc's slots, as INTERPOSE does */
    case LDP_FIX_INTERPOSE:
        s = sym_value(p, k, f, err, errlen, &bad);
        if (bad) return -1;
        if (!s) break;
        if (f->type == LDP_FIX_COPY) memcpy((void *)f->addr, (void *)s, f->addend);
        *mv = realloc(*mv, sizeof **mv * (*nmv + 1));
        (*mv)[(*nmv)++] = (struct copy_move){s, (uint64_t)f->addend, f->addr};
        break;
    }
    return 0;
}

int ldp_apply_fixups(struct ldp_plan *p, char *err, size_t errlen)
{
    struct copy_move *mv = NULL;
    size_t nmv = 0;
    for (uint32_t i = p->h->nobj; i-- > 0;) {
        const struct ldp_obj *o = &p->obj[i];
        uint32_t end = o->fix_first + o->fix_count;
        for (uint32_t k = o->fix_first; k < end; k++)
            if (apply_one(p, k, &mv, &nmv, err, errlen) < 0) { free(mv); return -1; }
        /* IRELATIVE resolvers may read the object's own relocated data */
        for (uint32_t k = o->fix_first; k < end; k++) {
            const struct ldp_fix *f = &p->fix[k];
            if (f->type != LDP_FIX_IRELATIVE) continue;
            struct ldp_rt *r = ldp_find_addr((void *)f->addend);
            if (!r || r->state < LDP_ST_MAPPED) {
                snprintf(err, errlen, "%s: IFUNC resolver at %#lx is outside the pooled objects",
                         ldp_str(p, o->path), f->addend);
                free(mv);
                return -1;
            }
            *(uint64_t *)f->addr = ((uint64_t (*)(void))f->addend)();
        }
    }
    if (nmv) {
        struct repoint_ctx c = {mv, nmv};
        ldp_real_iterate_phdr(repoint_one, &c);
    }
    free(mv);
    for (uint32_t i = 0; i < p->h->nobj; i++) ldp_objs[p->first_index + i]->state = LDP_ST_RELOCATED;
    return 0;
}
