/* TLS: the launcher's only thread-local variable is a large initialised
 * reserve.  The launcher is the main executable, so its block ends at the
 * thread pointer: the top of the reserve is the program's local-exec block
 * and the plan carves pooled libraries' static blocks below it (negative
 * tls_tpoff).  Writing the TLS init images into the reserve's init image
 * makes glibc copy them into every new thread.  The bottom of the reserve
 * holds the launcher's own per-thread state.  Objects loaded by dlopen get
 * dynamic TLS (tls_tpoff 0): a block per thread, allocated on first use;
 * those that need static TLS (initial-exec TPOFF64, TLSDESC) get a block
 * from what the program's plan left of the reserve, as glibc serves them
 * from its static TLS surplus, initialised in every thread (threads.c). */
#include "ldp.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>

/* static TLS of the pooled objects seen here is at most a few KiB (gdb:
 * 2.6 KiB); each KiB here is taken from every thread's stack, so keep it small */
#define RESERVE (16 * 1024)
#define STATE 1024               /* launcher per-thread state at the bottom */
#define MAXGEN (STATE - 64)

struct tstate {
    uint64_t marker;             /* the non-zero first byte */
    char *dlerr;
    int dlerr_pending;
    void **dyn;                  /* per global object index: this thread's dynamic TLS block */
    uint32_t ndyn;
    uint8_t gen[MAXGEN];         /* per global object index: TLS generation this thread has */
};

/* .tdata, not .tbss: the first byte is non-zero so glibc copies the whole
 * image (filesz == memsz) into each new thread */
/* aligned to a page, so blocks of any practical alignment (__thread with
 * aligned(4096)) fit; glibc then aligns the thread pointer to it too */
#define RESERVE_ALIGN 4096
static __thread union { unsigned char b[RESERVE]; struct tstate st; } ldp_reserve
    __attribute__((aligned(RESERVE_ALIGN))) = {.b = {1}};
const uint64_t ldp_tls_reserve_align = RESERVE_ALIGN;

const uint64_t ldp_tls_reserve_size = RESERVE - STATE;
static unsigned char *init_image;       /* the reserve's TLS init image */
static uint64_t relro_lo, relro_hi;
extern void *__tls_get_addr(void *);
static void *(*real_tls_get_addr)(void *);
static uint8_t cur_gen[MAXGEN];

uint64_t ldp_tls_tp(void)
{
    uint64_t tp;
    __asm__("movq %%fs:0, %0" : "=r"(tp));
    return tp;
}

void *ldp_tls_errslot(void) { return &ldp_reserve.st; }

void ldp_tls_setup(void)
{
    const Elf64_Phdr *ph = (const void *)getauxval(AT_PHDR);
    size_t n = getauxval(AT_PHNUM);
    uint64_t bias = 0;
    const Elf64_Phdr *tls = NULL;
    for (size_t i = 0; i < n; i++)
        if (ph[i].p_type == PT_PHDR) bias = (uint64_t)ph - ph[i].p_vaddr;
    for (size_t i = 0; i < n; i++) {
        if (ph[i].p_type == PT_TLS) tls = &ph[i];
        if (ph[i].p_type == PT_GNU_RELRO) relro_lo = bias + ph[i].p_vaddr, relro_hi = relro_lo + ph[i].p_memsz;
    }
    if (!tls || tls->p_filesz != RESERVE)
        ldp_die(127, "internal error: the launcher's TLS reserve is not initialised data");
    init_image = (unsigned char *)(bias + tls->p_vaddr);
    if ((uint64_t)&ldp_reserve + RESERVE != ldp_tls_tp())
        ldp_die(127, "internal error: the launcher's TLS block does not end at the thread pointer");
    real_tls_get_addr = __tls_get_addr;   /* ld.so's: bound at load, no dlsym */
}

/* The reserve's init image lies in the launcher's RELRO: a plan's writes
 * into it happen inside one writable window (one mprotect each way for the
 * whole image, not a pair per write: each pair splits and merges the
 * mapping, several microseconds each).  Only whole RELRO pages, as ld.so
 * protects them. */
static void image_protect(int prot)
{
    uint64_t lo = (uint64_t)init_image & ~4095ul, hi = ((uint64_t)init_image + RESERVE + 4095) & ~4095ul;
    uint64_t rlo = relro_lo & ~4095ul, rhi = relro_hi & ~4095ul;
    if (lo < rlo) lo = rlo;
    if (hi > rhi) hi = rhi;
    if (lo < hi) mprotect((void *)lo, hi - lo, prot);
}

static void image_write(uint64_t off, const void *src, uint64_t filesz, uint64_t memsz)
{
    if (src) memcpy(init_image + off, src, filesz);
    memset(init_image + off + filesz, 0, memsz - filesz);
}

/* ---- static blocks for dlopen'ed objects ---- */
struct sblock { int64_t tpoff; uint64_t size, align; uint32_t owner; };
static struct sblock *sblocks;
static uint32_t nsblocks;
static int64_t static_low;          /* lowest tpoff in use (the program's blocks, then ours) */
static int static_ready;

/* an unloaded owner's block is free again: a dlopen/dlclose loop of the
 * same library keeps reusing one block */
static int64_t find_free(uint64_t size, uint64_t align, uint32_t owner)
{
    for (uint32_t i = 0; i < nsblocks; i++) {
        struct sblock *b = &sblocks[i];
        struct ldp_rt *o = b->owner < ldp_nobj ? ldp_objs[b->owner] : NULL;
        if ((o && o->state != LDP_ST_GONE && b->owner != owner) || b->size < size || b->tpoff % (int64_t)align) continue;
        b->owner = owner;
        return b->tpoff;
    }
    return 0;
}

/* Give the objects of a dlopen plan that static TLS accesses target (the
 * plan's TPOFF and TLSDESC fixups) a static block; set in the plan's
 * object record, which every TLS path reads.  Before the fixups. */
int ldp_tls_assign_static(struct ldp_plan *p, char *err, size_t errlen)
{
    uint32_t first = p->first_index, n = p->h->nobj;
    if (!first || !n) return 0;
    uint8_t *need = NULL;
    for (uint32_t k = 0; k < p->h->nfix; k++) {
        const struct ldp_fix *f = &p->fix[k];
        if ((f->type != LDP_FIX_TPOFF && f->type != LDP_FIX_TLSDESC) || f->sym < first || f->sym >= first + n) continue;
        if (!need && !(need = calloc(n, 1))) { snprintf(err, errlen, "out of memory"); return -1; }
        need[f->sym - first] = 1;
    }
    if (!need) return 0;
    if (!static_ready) {
        struct ldp_rt *m = ldp_main != LDP_NONE ? ldp_objs[ldp_main] : NULL;
        static_low = -(int64_t)(m ? m->plan->h->static_tls_size : 0);
        static_ready = 1;
    }
    int rc = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        struct ldp_obj *o = (struct ldp_obj *)&p->obj[i];   /* the dlopen plan is ours (malloc'd) */
        if (!need[i] || o->tls_tpoff || !o->tls_memsz) continue;   /* set: the same plan mapped again */
        uint64_t align = o->tls_align ? o->tls_align : 1;
        int64_t t = 0;
        if (align <= RESERVE_ALIGN) t = find_free(o->tls_memsz, align, first + i);
        if (!t && align <= RESERVE_ALIGN) {
            /* the reserve ends at the thread pointer, which is RESERVE_ALIGN-aligned */
            t = (static_low - (int64_t)o->tls_memsz) & -(int64_t)align;
            if (RESERVE + t < STATE) {
                t = 0;
            } else {
                static_low = t;
                sblocks = realloc(sblocks, sizeof *sblocks * (nsblocks + 1));
                sblocks[nsblocks++] = (struct sblock){t, o->tls_memsz, align, first + i};
            }
        }
        if (!t) {
            /* glibc's words when its surplus is used up */
            snprintf(err, errlen, "%s: cannot allocate memory in static TLS block", ldp_str(p, o->path));
            rc = -1;
            break;
        }
        o->tls_tpoff = t;
    }
    free(need);
    return rc;
}

struct seed { const struct ldp_obj *o; uint32_t g; };

/* another thread's copy of a block, and its generation: its accesses
 * through __tls_get_addr must not copy the image over it again */
static void seed_thread(uint64_t tp, void *arg)
{
    const struct seed *s = arg;
    unsigned char *blk = (unsigned char *)(tp + s->o->tls_tpoff);
    memcpy(blk, (void *)s->o->tls_image, s->o->tls_filesz);
    memset(blk + s->o->tls_filesz, 0, s->o->tls_memsz - s->o->tls_filesz);
    if (s->g < MAXGEN) ((struct tstate *)(tp - RESERVE))->gen[s->g] = cur_gen[s->g];
}

/* Install the TLS init images of a plan's objects: into the reserve's init
 * image (future threads) and into the calling thread's block (every
 * thread's, for a dlopen plan). */
int ldp_tls_install(struct ldp_plan *p, char *err, size_t errlen)
{
    int writable = 0, ret = 0;
    for (uint32_t i = 0; i < p->h->nobj && !ret; i++) {
        const struct ldp_obj *o = &p->obj[i];
        uint32_t g = p->first_index + i;
        if (!o->tls_tpoff) {
            if (!o->tls_memsz) continue;
            if (g >= MAXGEN) {
                snprintf(err, errlen, "%s: too many objects for dynamic TLS", ldp_str(p, o->path));
                ret = -1;
                break;
            }
            cur_gen[g] = (uint8_t)(cur_gen[g] + 1) ? (uint8_t)(cur_gen[g] + 1) : 1;
            continue;
        }
        uint64_t off = RESERVE + o->tls_tpoff;
        if (off < STATE) {
            snprintf(err, errlen, "%s: TLS block overlaps the launcher's state", ldp_str(p, o->path));
            ret = -1;
            break;
        }
        if (!writable) image_protect(PROT_READ | PROT_WRITE), writable = 1;
        image_write(off, (void *)o->tls_image, o->tls_filesz, o->tls_memsz);
        unsigned char *blk = (unsigned char *)(ldp_tls_tp() + o->tls_tpoff);
        memcpy(blk, (void *)o->tls_image, o->tls_filesz);
        memset(blk + o->tls_filesz, 0, o->tls_memsz - o->tls_filesz);
        if (g < MAXGEN) {
            /* threads that already exist copy the image on first dynamic access */
            cur_gen[g] = (uint8_t)(cur_gen[g] + 1) ? (uint8_t)(cur_gen[g] + 1) : 1;
            image_write(offsetof(struct tstate, gen) + g, &cur_gen[g], 1, 1);
            ldp_reserve.st.gen[g] = cur_gen[g];
        }
        /* threads that exist already: glibc's _dl_init_static_tls; where
         * the thread list is out of reach, they copy the image on their
         * first access through __tls_get_addr (initial-exec code of
         * theirs would read zeros) */
        struct seed sd = {o, g};
        if (p->first_index) ldp_each_thread(seed_thread, &sd);
    }
    if (writable) image_protect(PROT_READ);
    return ret;
}

typedef struct { uint64_t module, offset; } tls_index;

static void fill_block(unsigned char *blk, const struct ldp_obj *o)
{
    memcpy(blk, (void *)o->tls_image, o->tls_filesz);
    memset(blk + o->tls_filesz, 0, o->tls_memsz - o->tls_filesz);
}

/* This thread's block of r: static (inside the reserve) or dynamic. */
void *ldp_tls_block(struct ldp_rt *r)
{
    struct tstate *t = &ldp_reserve.st;
    const struct ldp_obj *o = r->o;
    uint32_t g = r->index;
    if (o->tls_tpoff) {
        unsigned char *blk = (unsigned char *)(ldp_tls_tp() + o->tls_tpoff);
        if (g < MAXGEN && t->gen[g] != cur_gen[g]) {
            /* a thread older than a dlopen (or a reopen): fresh copy now */
            fill_block(blk, o);
            t->gen[g] = cur_gen[g];
        }
        return blk;
    }
    if (!o->tls_memsz || g >= MAXGEN) return NULL;
    if (g >= t->ndyn) {
        uint32_t n = (ldp_nobj > g ? ldp_nobj : g + 1) + 8;
        void **d = realloc(t->dyn, sizeof *d * n);
        if (!d) return NULL;
        memset(d + t->ndyn, 0, sizeof *d * (n - t->ndyn));
        t->dyn = d, t->ndyn = n;
    }
    if (!t->dyn[g] || t->gen[g] != cur_gen[g]) {
        uint64_t align = o->tls_align < 16 ? 16 : o->tls_align;
        if (!t->dyn[g]) t->dyn[g] = aligned_alloc(align, (o->tls_memsz + align - 1) / align * align);
        if (!t->dyn[g]) return NULL;
        fill_block(t->dyn[g], o);
        t->gen[g] = cur_gen[g];
    }
    return t->dyn[g];
}

void *ldp_tls_get_addr(void *arg)
{
    tls_index *ti = arg;
    static uint32_t last = LDP_NONE;    /* threads may race on it: read it once */
    uint32_t l = __atomic_load_n(&last, __ATOMIC_RELAXED);
    struct ldp_rt *r = NULL, *c = l < ldp_nobj ? ldp_objs[l] : NULL;
    if (c && c->o->tls_modid == ti->module && c->state != LDP_ST_GONE)
        r = c;
    else
        for (uint32_t i = 0; i < ldp_nobj; i++)
            if (ldp_objs[i] && (ldp_objs[i]->o->tls_tpoff || ldp_objs[i]->o->tls_memsz) &&
                ldp_objs[i]->o->tls_modid == ti->module && ldp_objs[i]->state != LDP_ST_GONE) {
                r = ldp_objs[i];
                __atomic_store_n(&last, i, __ATOMIC_RELAXED);
                break;
            }
    if (!r) return real_tls_get_addr(arg);
    unsigned char *blk = ldp_tls_block(r);
    if (!blk) ldp_die(127, "%s: cannot allocate its thread-local storage", r->path);
    return blk + ti->offset;
}
