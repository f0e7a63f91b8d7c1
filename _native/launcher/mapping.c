/* Mapping a plan's objects from the pool: reserve each object's whole range
 * (MAP_FIXED_NOREPLACE, so a clash is an error, not a silent overwrite),
 * then map its segments shared read-only, private copy-on-write or
 * anonymous, or read-only from the object's own file (text, rodata: what
 * relocation leaves as the file has it, page cache shared with ld.so).  Private and anonymous pages stay writable until the fixups
 * are done; ldp_protect_plan gives them their final protections. */
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

static void unmap_first(struct ldp_plan *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) munmap((void *)p->obj[i].map_start, p->obj[i].map_end - p->obj[i].map_start);
}

/* The object's file, if it still is the one the plan was built from (the
 * pool holds only the pages relocation changed: any other file's text
 * would not match them).  -1 with err set, -2 when the file changed. */
static int open_file(struct ldp_plan *p, const struct ldp_obj *o, char *err, size_t errlen)
{
    int fd = open(ldp_str(p, o->path), O_RDONLY | O_CLOEXEC);
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
        size_t len = o->map_end - o->map_start;
        void *m = mmap((void *)o->map_start, len, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED || m != (void *)o->map_start) {
            int e = errno;
            if (m != MAP_FAILED) munmap(m, len);
            snprintf(err, errlen, "%s: cannot reserve %#lx-%#lx: %s", ldp_str(p, o->path),
                     o->map_start, o->map_end, m == MAP_FAILED ? strerror(e) : "address taken");
            unmap_first(p, i);
            return -1;
        }
        uint32_t end = o->seg_first + o->seg_count;
        int filefd = -1;
        for (uint32_t k = o->seg_first; k < end; k++) {
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
            void *r;
            if (s->kind == LDP_SEG_FILE && filefd < 0 && (filefd = open_file(p, o, err, errlen)) < 0) {
                unmap_first(p, i + 1);
                return filefd;
            }
            if (s->kind == LDP_SEG_FILE)
                r = mmap((void *)s->addr, len, s->prot, MAP_PRIVATE | MAP_FIXED, filefd, s->pool_off);
            else if (s->kind == LDP_SEG_SHARED)
                r = mmap((void *)s->addr, len, s->prot, MAP_SHARED | MAP_FIXED, poolfd, s->pool_off);
            else if (s->kind == LDP_SEG_PRIVATE)
                r = mmap((void *)s->addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, poolfd,
                         s->pool_off);
            else
                r = mmap((void *)s->addr, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (r == MAP_FAILED) {
                snprintf(err, errlen, "%s: cannot map segment at %#lx: %s", ldp_str(p, o->path), s->addr,
                         strerror(errno));
                if (filefd >= 0) close(filefd);
                unmap_first(p, i + 1);
                return -1;
            }
        }
        if (filefd >= 0) close(filefd);
    }
    ldp_objects_mapped(p);
    return 0;
}

void ldp_protect_plan(struct ldp_plan *p)
{
    for (uint32_t k = 0; k < p->h->nseg; k++) {
        const struct ldp_seg *s = &p->seg[k];
        if (s->kind != LDP_SEG_SHARED && s->kind != LDP_SEG_FILE && s->prot != (PROT_READ | PROT_WRITE))
            mprotect((void *)s->addr, s->len, s->prot);
    }
}

void ldp_unmap(struct ldp_rt *r)
{
    munmap((void *)r->o->map_start, r->o->map_end - r->o->map_start);
}
