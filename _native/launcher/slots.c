/* The epoch's glibc stubs (loader/stubs.py): one stub region in the pool,
 * mapped shared r-x, and this process's slot table behind it, anonymous,
 * which the stubs jump through.  Every pooled object's call to (or own
 * pointer to) a glibc function is stub k, so the GOT pages holding them are
 * the same in every process; only the slot pages a process fills are its
 * own, and the common imports share the first ones.  The table is
 * read-only except while a plan fills it. */
#include "ldp.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t stubs_at, stubs_len, slots_at, slots_len;
static int slots_writable;   /* mapped writable for the first plan: one mprotect, not two */
static uint32_t *filled;     /* slot indices filled so far, for ldp_slot_identity */
static uint32_t nfilled, capfilled;

/* A broker's pool starts with a header naming the epoch's placement window
 * (docs/protocol.md): the stubs and slots must lie in it.  A --plan debug
 * pool (loader.localpool) has no header and no such check. */
uint64_t ldp_window_lo, ldp_window_size;
int ldp_window_known;

static int outside_window(int poolfd, const struct ldp_plan_hdr *h)
{
    struct { char magic[8]; uint32_t version, hsize; uint64_t size, epoch, window, window_size; } ph;
    if (ldp_window_known) {
        ph.window = ldp_window_lo, ph.window_size = ldp_window_size;
    } else if (pread(poolfd, &ph, sizeof ph, 0) != (ssize_t)sizeof ph || memcmp(ph.magic, "LDPPOOL1", 8) != 0) {
        return 0;
    }
    uint64_t lo = ph.window, hi = ph.window + ph.window_size;
    return h->stubs_addr < lo || h->stubs_addr + h->stubs_size > hi ||
           h->slots_addr < lo || h->slots_addr + h->slots_size > hi;
}

int ldp_slots_map(struct ldp_plan *p, int poolfd, char *err, size_t errlen)
{
    const struct ldp_plan_hdr *h = p->h;
    if (!h->stubs_addr) return 0;
    if (stubs_at) {
        if (h->stubs_addr == stubs_at && h->stubs_size == stubs_len && h->slots_addr == slots_at &&
            h->slots_size == slots_len)
            return 0;
        snprintf(err, errlen, "plan from another broker epoch (stub region %#lx, this process has %#lx)",
                 h->stubs_addr, stubs_at);
        return -1;
    }
    if (outside_window(poolfd, h)) {
        snprintf(err, errlen, "stub region %#lx or slot table %#lx outside the pool's placement window",
                 h->stubs_addr, h->slots_addr);
        return -1;
    }
    void *a = mmap((void *)h->stubs_addr, h->stubs_size, PROT_READ | PROT_EXEC,
                   MAP_SHARED | MAP_FIXED_NOREPLACE, poolfd, (off_t)h->stubs_pool_off);
    if (a != (void *)h->stubs_addr) {
        snprintf(err, errlen, "cannot map the stub region at %#lx: %s", h->stubs_addr,
                 a == MAP_FAILED ? strerror(errno) : "address in use");
        if (a != MAP_FAILED) munmap(a, h->stubs_size);
        return -1;
    }
    /* the whole table at once: pages no plan fills are never touched */
    void *s = mmap((void *)h->slots_addr, h->slots_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (s != (void *)h->slots_addr) {
        snprintf(err, errlen, "cannot map the slot table at %#lx: %s", h->slots_addr,
                 s == MAP_FAILED ? strerror(errno) : "address in use");
        if (s != MAP_FAILED) munmap(s, h->slots_size);
        munmap(a, h->stubs_size);
        return -1;
    }
    stubs_at = h->stubs_addr, stubs_len = h->stubs_size;
    slots_at = h->slots_addr, slots_len = h->slots_size;
    slots_writable = 1;
    return 0;
}

/* mprotect only the pages the plan's records touch */
static void protect_pages(struct ldp_plan *p, int prot)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint32_t i = 0; i < p->h->nslot; i++) {
        uint64_t a = slots_at + 8ull * p->slot[i].index;
        if (a < lo) lo = a;
        if (a + 8 > hi) hi = a + 8;
    }
    lo &= ~4095ull, hi = (hi + 4095) & ~4095ull;
    mprotect((void *)lo, hi - lo, prot);
}

int ldp_slots_fill(struct ldp_plan *p, uint64_t (*value)(struct ldp_plan *, const struct ldp_slot *, char *, size_t),
                   char *err, size_t errlen)
{
    if (!p->h->nslot) {
        if (slots_writable) mprotect((void *)slots_at, slots_len, PROT_READ);
        slots_writable = 0;
        return 0;
    }
    if (!slots_at) {
        snprintf(err, errlen, "plan fills slots before the slot table is mapped");
        return -1;
    }
    uint64_t *tab = (uint64_t *)slots_at;
    uint64_t *vals = malloc(sizeof *vals * p->h->nslot);
    if (!vals) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* values first: a later plan (dlopen) usually needs only slots earlier
     * plans filled, and then the table is not made writable at all (an
     * mprotect pair per dlopen otherwise) */
    int rc = 0, need = 0;
    for (uint32_t i = 0; i < p->h->nslot && rc == 0; i++) {
        const struct ldp_slot *s = &p->slot[i];
        err[0] = 0;
        uint64_t v = value(p, s, err, errlen);
        if (err[0]) { rc = -1; break; }
        vals[i] = v;
        if (tab[s->index] == v) continue;
        if (tab[s->index]) {
            /* another plan of this epoch gave the index to another symbol:
             * overwriting it would redirect that symbol's callers */
            snprintf(err, errlen, "slot %u already holds another function (broker registry changed)", s->index);
            rc = -1;
            break;
        }
        need = 1;
    }
    if (rc == 0 && need) {
        if (!slots_writable) protect_pages(p, PROT_READ | PROT_WRITE);
        for (uint32_t i = 0; i < p->h->nslot; i++) {
            const struct ldp_slot *s = &p->slot[i];
            if (tab[s->index] == vals[i]) continue;
            if (tab[s->index]) {   /* the plan itself gives one index two functions */
                snprintf(err, errlen, "slot %u already holds another function (broker registry changed)", s->index);
                rc = -1;
                break;
            }
            tab[s->index] = vals[i];
            if (nfilled == capfilled) {
                capfilled = capfilled ? 2 * capfilled : 256;
                filled = realloc(filled, capfilled * sizeof *filled);
            }
            filled[nfilled++] = s->index;
        }
        if (!slots_writable) protect_pages(p, PROT_READ);
    }
    free(vals);
    if (slots_writable) mprotect((void *)slots_at, slots_len, PROT_READ);
    slots_writable = 0;
    return rc;
}

void *ldp_slot_identity(void *a)
{
    if (!a) return a;
    const uint64_t *tab = (const uint64_t *)slots_at;
    for (uint32_t i = 0; i < nfilled; i++)
        if (tab[filled[i]] == (uint64_t)a) return (void *)(stubs_at + 8ull * filled[i]);
    return a;
}

const void *ldp_slot_target(const void *a)
{
    uint64_t x = (uint64_t)a;
    if (!stubs_at || x < stubs_at || x >= stubs_at + stubs_len || (x - stubs_at) % 8) return a;
    uint64_t k = (x - stubs_at) / 8;
    if (k >= slots_len / 8) return a;
    uint64_t v = ((const uint64_t *)slots_at)[k];
    return v ? (const void *)v : a;
}
