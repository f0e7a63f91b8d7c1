/* Mapping a plan's objects from the pool: every segment is mapped where
 * the plan puts it with MAP_FIXED_NOREPLACE, so a clash with anything
 * already there is an error, never a silent overwrite; the segments cover
 * the object's range (holes between them are reserved PROT_NONE), so no
 * separate reservation is needed and no mapping replaces another: one
 * system call per run of alike segments, fewer than ld.so's map-then-
 * overlay.  Segments are shared read-only, private copy-on-write or
 * anonymous from the pool, or read-only from the object's own file (text,
 * rodata: what relocation leaves as the file has it, page cache shared with
 * ld.so).  Private and anonymous pages stay writable until the fixups are
 * done; ldp_protect_plan gives them their final protections. */
#include "ldp.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* Undo the mappings of objects [0, n) and of object n up to `upto`: only
 * what this plan mapped, never what a failed NOREPLACE found there. */
static void unmap_upto(struct ldp_plan *p, uint32_t n, uint64_t upto)
{
    for (uint32_t i = 0; i < n; i++) munmap((void *)p->obj[i].map_start, p->obj[i].map_end - p->obj[i].map_start);
    if (n < p->h->nobj && upto > p->obj[n].map_start) munmap((void *)p->obj[n].map_start, upto - p->obj[n].map_start);
}

/* mmap exactly at addr without replacing anything; errno EEXIST when taken */
static int map_at(uint64_t addr, uint64_t len, int prot, int flags, int fd, uint64_t off)
{
    void *r = mmap((void *)addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off);
    if (r == MAP_FAILED) return -1;
    if (r != (void *)addr) {
        /* a kernel before 4.17 takes the flag as a hint */
        munmap(r, len);
        errno = EEXIST;
        return -1;
    }
    return 0;
}

/* The object's file, if it still is the one the plan was built from (the
 * pool holds only the pages relocation changed: any other file's text
 * would not match them).  -1 with err set, -2 when the file changed. */
int ldp_prog_fd = -1;

static int open_file(struct ldp_plan *p, const struct ldp_obj *o, char *err, size_t errlen)
{
    int fd = -1;
    if ((o->flags & LDP_OBJ_MAIN) && ldp_prog_fd >= 0) {
        /* opened by main.c (one open of the program, not two); checked
         * below like any other */
        fd = ldp_prog_fd;
        ldp_prog_fd = -1;
    } else {
        fd = open(ldp_str(p, o->path), O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", ldp_str(p, o->path), strerror(errno));
        return errno == ENOENT ? -2 : -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_dev != o->file_dev || (uint64_t)st.st_ino != o->file_ino ||
        (uint64_t)st.st_size != o->file_size ||
        (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec != o->file_mtime_ns) {
        snprintf(err, errlen, "%s: library changed on disk since it was pooled", ldp_str(p, o->path));
        close(fd);
        return -2;
    }
    return fd;
}

/* On failure nothing of the plan stays mapped (and nothing else is touched):
 * -1, or -2 when an object's file changed since the plan was made (ld.so
 * would load the new file: no fallback should pretend otherwise). */
int ldp_map_plan(struct ldp_plan *p, int poolfd, char *err, size_t errlen)
{
    for (uint32_t i = 0; i < p->h->nobj; i++) {
        const struct ldp_obj *o = &p->obj[i];
        uint32_t end = o->seg_first + o->seg_count;
        uint64_t at = o->map_start;   /* mapped so far: [map_start, at) */
        int filefd = -1;
        for (uint32_t k = o->seg_first; k <= end; k++) {
            uint64_t next = k < end ? p->seg[k].addr : o->map_end;
            if (next > at && map_at(at, next - at, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) < 0) {
                snprintf(err, errlen, "%s: cannot reserve %#lx-%#lx: %s", ldp_str(p, o->path), at, next,
                         errno == EEXIST ? "address taken" : strerror(errno));
                goto fail;
            }
            if (k == end) break;
            const struct ldp_seg *s = &p->seg[k];
            /* one mmap for a run of segments that map alike: private and
             * anonymous pages all start writable, their final protections
             * come per segment in ldp_protect_plan */
            uint64_t len = s->len;
            while (k + 1 < end) {
                const struct ldp_seg *n = &p->seg[k + 1];
                if (n->kind != s->kind || n->addr != s->addr + len ||
                    ((s->kind == LDP_SEG_SHARED || s->kind == LDP_SEG_FILE) && n->prot != s->prot) ||
                    (s->kind != LDP_SEG_ANON && n->pool_off != s->pool_off + len))
                    break;
                len += n->len;
                k++;
            }
            int r;
            if (s->kind == LDP_SEG_FILE && filefd < 0 && (filefd = open_file(p, o, err, errlen)) < 0) {
                unmap_upto(p, i, s->addr);
                return filefd;
            }
            if (s->kind == LDP_SEG_FILE)
                r = map_at(s->addr, len, s->prot, MAP_PRIVATE, filefd, s->pool_off);
            else if (s->kind == LDP_SEG_SHARED)
                r = map_at(s->addr, len, s->prot, MAP_SHARED, poolfd, s->pool_off);
            else if (s->kind == LDP_SEG_PRIVATE)
                r = map_at(s->addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, poolfd, s->pool_off);
            else
                r = map_at(s->addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (r < 0) {
                snprintf(err, errlen, "%s: cannot map segment at %#lx: %s", ldp_str(p, o->path), s->addr,
                         errno == EEXIST ? "address taken" : strerror(errno));
                goto fail;
            }
            at = s->addr + len;
        }
        if (filefd >= 0) close(filefd);
        continue;
    fail:
        if (filefd >= 0) close(filefd);
        unmap_upto(p, i, at);
        return -1;
    }
    ldp_objects_mapped(p);
    return 0;
}

/* Final protections of private and anonymous pages, one call per run of
 * adjacent segments that end alike. */
void ldp_protect_plan(struct ldp_plan *p)
{
    for (uint32_t k = 0; k < p->h->nseg; k++) {
        const struct ldp_seg *s = &p->seg[k];
        if (s->kind == LDP_SEG_SHARED || s->kind == LDP_SEG_FILE || s->prot == (PROT_READ | PROT_WRITE)) continue;
        uint64_t len = s->len;
        while (k + 1 < p->h->nseg) {
            const struct ldp_seg *n = &p->seg[k + 1];
            if ((n->kind != LDP_SEG_PRIVATE && n->kind != LDP_SEG_ANON) || n->addr != s->addr + len || n->prot != s->prot)
                break;
            len += n->len;
            k++;
        }
        mprotect((void *)s->addr, len, s->prot);
    }
}

void ldp_unmap(struct ldp_rt *r)
{
    munmap((void *)r->o->map_start, r->o->map_end - r->o->map_start);
}
