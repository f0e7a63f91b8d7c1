/* Start-up without a broker round trip.  A round trip to the broker costs
 * more than the rest of a small program's start-up (each wake-up of a
 * sleeping process is tens of microseconds), and for an already pooled
 * program its answer is a cached plan anyway; so the broker publishes each
 * program plan it grants in a plan cache file (host_broker/plancache.py,
 * format in docs/protocol.md), named after the FNV-1a-64 of the exact
 * ACQUIRE_PROGRAM payload.
 *
 * Here: the same payload, the file, checks of everything the broker would
 * check that the file can vouch for (epoch, payload, /etc/ld.so.cache), our
 * own open of the pool, and a pin of every image: an OFD read lock on its
 * slot of the pool's pin table, then its stamp compared (host_broker/pins.py
 * is the other side: eviction write-locks the slot and clears the stamp).
 * Then the broker is told (HELLO + ACQUIRE_PROGRAM in one write, replies
 * read lazily by broker.c) and the caller maps the cached plan.  Any
 * mismatch: the slow path, silently (LDPOOL_DEBUG=1 says why).
 *
 * The pool descriptor must be our own open file description: OFD locks
 * belong to it, and the one the broker sends is shared by every client. */
#include "ldp.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define FAST_MAGIC "LDPFAST1"
#define FAST_VERSION 1
#define POOL_MAGIC "LDPPOOL1"
#define POOL_VERSION 2
#define MAX_FILE (256u << 20)
#define LD_CACHE "/etc/ld.so.cache"

struct fast_hdr {
    char magic[8];
    uint32_t version, hdr_size;
    uint64_t epoch, pool_size;
    uint64_t cache_dev, cache_ino, cache_size, cache_mtime_ns;   /* all 0: no ld.so.cache */
    uint32_t npin, payload_len;
    uint64_t off_pool_name, off_payload, off_pins, off_plan, plan_len;
};
struct fast_pin { uint64_t slot, stamp; };

/* page 0 of the pool (host_broker/pool.py) */
struct pool_hdr {
    char magic[8];
    uint32_t version, header_size;
    uint64_t pool_size, epoch, window, window_size;
    uint8_t instance[16];
    uint64_t pin_off, pin_slots;
};

static int miss(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int miss(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* asked once: both the plan file and the pool must be ours */
static uid_t euid(void)
{
    static uid_t u = (uid_t)-1;
    if (u == (uid_t)-1) u = geteuid();
    return u;
}

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int same_file(const struct stat *st, uint64_t dev, uint64_t ino, uint64_t size, uint64_t mtime_ns)
{
    return (uint64_t)st->st_dev == dev && (uint64_t)st->st_ino == ino && (uint64_t)st->st_size == size &&
           (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec == mtime_ns;
}

/* The whole file, if it is ours and of a sane size: mapped, not read (the
 * page cache's pages, one fault for a small plan where a copy faults every
 * heap page it fills; the broker writes these files whole and renames
 * them, so a mapped one never changes). */
static unsigned char *read_cache_file(const char *file, size_t *len, char *why, size_t n)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) { miss(why, n, "no plan cache file %s", file); return NULL; }
    struct stat st;
    unsigned char *buf = NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != euid() ||
        (size_t)st.st_size < sizeof(struct fast_hdr) || (size_t)st.st_size > MAX_FILE) {
        miss(why, n, "%s: not a plan cache file of ours", file);
    } else {
        /* private and writable: nothing may write through to the file */
        void *m = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) miss(why, n, "%s: cannot map: %s", file, strerror(errno));
        else buf = m, *len = st.st_size;
    }
    close(fd);
    return buf;
}

/* Header and bounds: everything the launcher will read lies in the file. */
static int check_header(const unsigned char *buf, size_t len, const void *req, size_t reqlen, char *why, size_t n)
{
    const struct fast_hdr *h = (const void *)buf;
    if (memcmp(h->magic, FAST_MAGIC, 8) != 0 || h->version != FAST_VERSION || h->hdr_size != sizeof *h)
        return miss(why, n, "plan cache file of another version");
    if (h->off_pool_name >= len || !memchr(buf + h->off_pool_name, 0, len - h->off_pool_name) ||
        h->off_payload > len || h->payload_len > len - h->off_payload ||
        h->off_pins > len || h->npin > (len - h->off_pins) / sizeof(struct fast_pin) ||
        h->off_plan > len || h->plan_len > len - h->off_plan || h->off_plan % 8 || h->off_pins % 8)
        return miss(why, n, "plan cache file out of bounds");
    /* the file name is a hash: the payload itself must be ours */
    if (h->payload_len != reqlen || memcmp(buf + h->off_payload, req, reqlen) != 0)
        return miss(why, n, "plan cache file for another request (hash collision)");
    struct stat cs;
    if (stat(LD_CACHE, &cs) == 0 ? !same_file(&cs, h->cache_dev, h->cache_ino, h->cache_size, h->cache_mtime_ns)
                                 : (h->cache_dev | h->cache_ino | h->cache_size | h->cache_mtime_ns) != 0)
        return miss(why, n, LD_CACHE " changed since the plan was made");
    return 0;
}

/* Our own open of the pool, the header checked against the plan's epoch;
 * -1 (nothing open) on any mismatch. */
static int open_pool(const char *name, const struct fast_hdr *h, struct pool_hdr *ph, char *why, size_t n)
{
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) return miss(why, n, "pool %s: %s", name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_uid != euid() || (uint64_t)st.st_size != h->pool_size ||
        pread(fd, ph, sizeof *ph, 0) != (ssize_t)sizeof *ph || memcmp(ph->magic, POOL_MAGIC, 8) != 0 ||
        ph->version != POOL_VERSION || ph->pool_size != h->pool_size || ph->epoch != h->epoch ||
        ph->pin_off < sizeof *ph || ph->pin_slots > (h->pool_size - ph->pin_off) / 8) {
        close(fd);
        return miss(why, n, "pool %s is not the plan's (epoch or size changed)", name);
    }
    return fd;
}

/* Pin every image: an OFD read lock on its slot, then its stamp must be
 * the one the plan was made with (else it was evicted, maybe replaced). */
static int pin_images(int fd, const struct pool_hdr *ph, const struct fast_pin *pins, uint32_t npin,
                      char *why, size_t n)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint32_t i = 0; i < npin; i++) {
        if (pins[i].slot >= ph->pin_slots) return miss(why, n, "pin slot %lu out of range", pins[i].slot);
        struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET,
                           .l_start = (off_t)(ph->pin_off + 8 * pins[i].slot), .l_len = 8};
        if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
            return miss(why, n, "image in slot %lu is being evicted", pins[i].slot);
        if (pins[i].slot < lo) lo = pins[i].slot;
        if (pins[i].slot > hi) hi = pins[i].slot;
    }
    if (!npin) return 0;
    size_t span = (hi - lo + 1) * 8;
    uint64_t small[64], *stamps = span <= sizeof small ? small : malloc(span);
    int ok = pread(fd, stamps, span, ph->pin_off + 8 * lo) == (ssize_t)span;
    for (uint32_t i = 0; ok && i < npin; i++) ok = pins[i].stamp && stamps[pins[i].slot - lo] == pins[i].stamp;
    if (stamps != small) free(stamps);
    return ok ? 0 : miss(why, n, "an image of the plan was evicted");
}

void *ldp_fast_acquire(const char *path, const char *argv0, size_t *len, uint64_t *pool_size,
                       char *why, size_t whylen)
{
    size_t reqlen, flen;
    const void *req = ldp_broker_request(path, argv0, &reqlen);
    /* small buffers, no printf: every stack page the launcher touches is a
     * page fault (~3 us here), and a socket path longer than sun_path
     * cannot be connected to anyway (the slow path says so) */
    char file[sizeof ((struct sockaddr_un *)0)->sun_path + 32];
    size_t sl;
    if (ldp_socket_path(file, sizeof ((struct sockaddr_un *)0)->sun_path) < 0) {
        miss(why, whylen, "socket path too long");
        return NULL;
    }
    sl = strlen(file);
    memcpy(file + sl, ".plans/", 7);
    uint64_t hash = fnv1a64(req, reqlen);
    for (int i = 0; i < 16; i++) file[sl + 7 + i] = "0123456789abcdef"[(hash >> (60 - 4 * i)) & 15];
    file[sl + 23] = 0;
    unsigned char *buf = read_cache_file(file, &flen, why, whylen);
    if (!buf) return NULL;
    const struct fast_hdr *h = (const void *)buf;
    struct pool_hdr ph;
    int fd = -1;
    if (check_header(buf, flen, req, reqlen, why, whylen) < 0 ||
        (fd = open_pool((const char *)buf + h->off_pool_name, h, &ph, why, whylen)) < 0)
        goto fail;
    /* locks before the broker hears of us: from here our images stay */
    if (pin_images(fd, &ph, (const void *)(buf + h->off_pins), h->npin, why, whylen) < 0) goto fail;
    if (ldp_broker_announce(buf + h->off_plan, h->plan_len, h->epoch) < 0) {
        miss(why, whylen, "no broker answers");
        goto fail;
    }
    ldp_pool_fd = ldp_move_high(fd);
    ldp_window_lo = ph.window, ldp_window_size = ph.window_size, ldp_window_known = 1;
    *pool_size = h->pool_size;
    *len = h->plan_len;
    return buf + h->off_plan;
fail:
    if (fd >= 0) close(fd);   /* drops every lock taken */
    munmap(buf, flen);
    return NULL;
}

int ldp_fast_check_plan(const struct ldp_plan *p, const struct stat *prog, char *why, size_t whylen)
{
    for (uint32_t i = 0; i < p->h->nobj; i++) {
        const struct ldp_obj *o = &p->obj[i];
        if (o->flags & LDP_OBJ_MAIN) {
            if (!same_file(prog, o->file_dev, o->file_ino, o->file_size, o->file_mtime_ns))
                return miss(why, whylen, "%s changed since the plan was made", ldp_str(p, o->path));
            continue;
        }
        /* mapping.c checks the file of every object mapped partly from it;
         * one mapped wholly from the pool (--text-in-pool) is checked here */
        int from_file = 0;
        for (uint32_t k = o->seg_first; k < o->seg_first + o->seg_count && !from_file; k++)
            from_file = p->seg[k].kind == LDP_SEG_FILE;
        struct stat st;
        if (!from_file && (stat(ldp_str(p, o->path), &st) < 0 ||
                           !same_file(&st, o->file_dev, o->file_ino, o->file_size, o->file_mtime_ns)))
            return miss(why, whylen, "%s changed since the plan was made", ldp_str(p, o->path));
    }
    return 0;
}

void ldp_fast_abandon(void)
{
    ldp_broker_forget();
    if (ldp_pool_fd >= 0) close(ldp_pool_fd);   /* the pins go with it */
    ldp_pool_fd = -1;
    ldp_window_known = 0;
}
