/* Plan validation: a plan comes from another process (or a file), so every
 * offset, count, string and address is checked before anything is mapped or
 * written.  A bad plan is a one-line error, never a crash. */
#include "ldp.h"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096u
#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

extern const uint64_t ldp_tls_reserve_size, ldp_tls_reserve_align;

static int table_ok(size_t len, uint64_t off, uint64_t n, size_t elt)
{
    if (n == 0) return 1;
    if (off % 8 || off > len) return 0;
    if (n > (len - off) / elt) return 0;
    return 1;
}

static int str_ok(const struct ldp_plan *p, uint32_t off)
{
    return off < p->h->str_size;
}

/* The segment of `o` containing [addr, addr+n), or NULL. */
static const struct ldp_seg *seg_of(const struct ldp_plan *p, const struct ldp_obj *o,
                                    uint64_t addr, uint64_t n)
{
    uint32_t lo = o->seg_first, hi = o->seg_first + o->seg_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct ldp_seg *s = &p->seg[mid];
        if (addr < s->addr) hi = mid;
        else if (addr >= s->addr + s->len) lo = mid + 1;
        else return (n <= s->addr + s->len - addr) ? s : NULL;
    }
    return NULL;
}

static int check_fix(const struct ldp_plan *p, const struct ldp_obj *o, const struct ldp_fix *f,
                     uint32_t nglobal, char *err, size_t errlen)
{
    uint64_t width = 8;
    switch (f->type) {
    case LDP_FIX_ABS64: case LDP_FIX_IRELATIVE: break;
    case LDP_FIX_SYM64: case LDP_FIX_GLIBC_TPOFF:
        if (f->sym >= p->h->nimport) BAD("fixup at %#lx: import %u out of range", f->addr, f->sym);
        break;
    case LDP_FIX_SYM_PC32: case LDP_FIX_SYM32: case LDP_FIX_SYM32S:
        width = 4;
        if (f->sym >= p->h->nimport) BAD("fixup at %#lx: import %u out of range", f->addr, f->sym);
        break;
    case LDP_FIX_DTPMOD: case LDP_FIX_TPOFF:
        if (f->sym >= nglobal) BAD("TLS fixup at %#lx: object %u out of range", f->addr, f->sym);
        break;
    case LDP_FIX_TLSDESC:
        width = 16;
        if (f->sym >= nglobal) BAD("TLSDESC fixup at %#lx: object %u out of range", f->addr, f->sym);
        break;
    case LDP_FIX_COPY:
        if (f->sym != LDP_NONE && f->sym >= p->h->nimport) BAD("COPY at %#lx: import out of range", f->addr);
        if (f->addend <= 0 || f->addend > (1 << 30)) BAD("COPY at %#lx: bad size %ld", f->addr, f->addend);
        width = (uint64_t)f->addend;
        if (f->sym == LDP_NONE) {
            int ok = 0;
            for (uint32_t i = 0; i < p->h->nobj; i++)
                if (f->aux >= p->obj[i].map_start && width <= p->obj[i].map_end - f->aux) ok = 1;
            if (!ok) BAD("COPY at %#lx: source %#lx outside the plan's objects", f->addr, f->aux);
        }
        break;
    case LDP_FIX_INTERPOSE:
        /* writes nothing at addr: it only has to lie in the object */
        if (f->sym >= p->h->nimport) BAD("fixup at %#lx: import %u out of range", f->addr, f->sym);
        if (f->addend <= 0 || f->addend > (1 << 30) || f->addr < o->map_start ||
            (uint64_t)f->addend > o->map_end - f->addr || f->addr >= o->map_end)
            BAD("INTERPOSE at %#lx: outside %s", f->addr, ldp_str(p, o->path));
        return 0;
    default:
        BAD("fixup at %#lx: unknown type %u", f->addr, f->type);
    }
    /* a COPY may run from .data on into .bss: adjacent writable segments */
    if (f->addr + width < f->addr) BAD("fixup at %#lx: range wraps", f->addr);
    for (uint64_t a = f->addr, end = f->addr + width; a < end;) {
        const struct ldp_seg *s = seg_of(p, o, a, 1);
        if (!s || s->kind == LDP_SEG_SHARED || s->kind == LDP_SEG_FILE)
            BAD("fixup at %#lx (type %u) is outside the private pages of %s", f->addr, f->type,
                ldp_str(p, o->name));
        a = s->addr + s->len;
    }
    return 0;
}

static int overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* The stub region and slot table: page aligned, in user space, apart from
 * each other and from every object, the stubs inside the pool; every slot
 * record names an import and an index both ranges hold.  (That they are
 * the epoch's ranges is checked when mapping: slots.c keeps the first.) */
static int check_stubs(struct ldp_plan *p, uint32_t nglobal, char *err, size_t errlen)
{
    const struct ldp_plan_hdr *h = p->h;
    if (!h->stubs_addr) {
        if (h->nslot) BAD("plan fills %u slots but has no stub region", h->nslot);
        return 0;
    }
    if (h->stubs_addr % PAGE || h->slots_addr % PAGE || h->stubs_size % PAGE || h->slots_size % PAGE ||
        !h->stubs_size || !h->slots_size || h->stubs_size > (1u << 24) || h->slots_size > (1u << 24) ||
        h->stubs_addr > 0x7ffffffff000ul - h->stubs_size || h->slots_addr > 0x7ffffffff000ul - h->slots_size ||
        overlaps(h->stubs_addr, h->stubs_size, h->slots_addr, h->slots_size))
        BAD("bad stub region %#lx+%#lx or slot table %#lx+%#lx", h->stubs_addr, h->stubs_size,
            h->slots_addr, h->slots_size);
    if (h->stubs_pool_off % PAGE || h->stubs_pool_off > h->pool_size || h->stubs_size > h->pool_size - h->stubs_pool_off)
        BAD("stub region outside the pool");
    for (uint32_t i = 0; i < h->nobj; i++)
        if (overlaps(p->obj[i].map_start, p->obj[i].map_end - p->obj[i].map_start, h->stubs_addr, h->stubs_size) ||
            overlaps(p->obj[i].map_start, p->obj[i].map_end - p->obj[i].map_start, h->slots_addr, h->slots_size))
            BAD("%s: range overlaps the stub region or slot table", ldp_str(p, p->obj[i].path));
    if (!table_ok(p->len, h->off_slot, h->nslot, sizeof(struct ldp_slot))) BAD("plan slot table out of bounds");
    p->slot = (const void *)(p->buf + h->off_slot);
    uint64_t nstub = h->stubs_size / 8 < h->slots_size / 8 ? h->stubs_size / 8 : h->slots_size / 8;
    for (uint32_t i = 0; i < h->nslot; i++) {
        const struct ldp_slot *s = &p->slot[i];
        if (s->index >= nstub || s->import >= h->nimport || s->obj >= nglobal)
            BAD("slot record %u (slot %u, import %u, object %u) out of range", i, s->index, s->import, s->obj);
    }
    return 0;
}

int ldp_plan_check(struct ldp_plan *p, const void *buf, size_t len, uint64_t pool_size,
                   char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->buf = buf;
    p->len = len;
    const struct ldp_plan_hdr *h = buf;
    if (len < sizeof *h || memcmp(h->magic, LDP_PLAN_MAGIC, 8) != 0) BAD("not an ldpool plan");
    if (h->version != LDP_PLAN_VERSION) BAD("plan version %u, expected %u", h->version, LDP_PLAN_VERSION);
    if (h->hdr_size < sizeof *h || h->hdr_size > len) BAD("plan header size %u is wrong", h->hdr_size);
    p->h = h;
    if (!table_ok(len, h->off_obj, h->nobj, sizeof(struct ldp_obj)) ||
        !table_ok(len, h->off_seg, h->nseg, sizeof(struct ldp_seg)) ||
        !table_ok(len, h->off_fix, h->nfix, sizeof(struct ldp_fix)) ||
        !table_ok(len, h->off_import, h->nimport, sizeof(struct ldp_import)) ||
        !table_ok(len, h->off_init, h->ninit, 4) || !table_ok(len, h->off_glibc, h->nglibc, 4))
        BAD("plan table out of bounds (plan is %zu bytes)", len);
    if (h->off_str > len || h->str_size > len - h->off_str || h->str_size == 0)
        BAD("plan string table out of bounds");
    p->obj = (const void *)((const char *)buf + h->off_obj);
    p->seg = (const void *)((const char *)buf + h->off_seg);
    p->fix = (const void *)((const char *)buf + h->off_fix);
    p->imp = (const void *)((const char *)buf + h->off_import);
    p->init = (const void *)((const char *)buf + h->off_init);
    p->glibc = (const void *)((const char *)buf + h->off_glibc);
    p->str = (const char *)buf + h->off_str;
    p->first_index = h->first_index;
    if (p->str[h->str_size - 1] != 0) BAD("plan string table is not NUL-terminated");
    if (h->nobj == 0 && h->first_index == 0) BAD("plan has no objects");
    if (h->first_index > 1u << 20 || h->nobj > 1u << 20) BAD("plan object count out of range");
    uint32_t nglobal = h->first_index + h->nobj;
    if (h->first_index == 0 && h->main_obj >= h->nobj) BAD("plan main object %u out of range", h->main_obj);
    if (pool_size && h->pool_size > pool_size)
        BAD("plan refers to a %lu-byte pool, the pool has %lu bytes", h->pool_size, pool_size);
    if (h->static_tls_size > ldp_tls_reserve_size || h->static_tls_align > ldp_tls_reserve_align) {
        snprintf(err, errlen, "the program needs %lu bytes of static TLS aligned to %lu; the launcher "
                 "reserves %lu aligned to %lu (not supported)", h->static_tls_size, h->static_tls_align,
                 ldp_tls_reserve_size, ldp_tls_reserve_align);
        return -2;
    }
    for (uint32_t i = 0; i < h->nglibc; i++)
        if (!str_ok(p, p->glibc[i])) BAD("glibc name %u out of bounds", i);
    for (uint32_t i = 0; i < h->ninit; i++)
        if (p->init[i] >= nglobal) BAD("init order entry %u out of range", i);
    if (h->libc_build_id_len > LDP_BUILD_ID_MAX) BAD("libc build-id of %u bytes", h->libc_build_id_len);
    for (uint32_t i = 0; i < h->nimport; i++) {
        const struct ldp_import *im = &p->imp[i];
        if (!str_ok(p, im->name) || (im->version != LDP_NONE && !str_ok(p, im->version)))
            BAD("import %u: name out of bounds", i);
        uint32_t known = LDP_IMP_WEAK | LDP_IMP_FUNC | LDP_IMP_TLS | LDP_IMP_LIBC | LDP_IMP_IFUNC;
        if (im->flags & ~known) BAD("import %u: unknown flags %#x", i, im->flags);
        /* a libc value needs the build-id it is for; TLS never has one */
        if ((im->flags & LDP_IMP_LIBC) && (!h->libc_build_id_len || (im->flags & LDP_IMP_TLS)))
            BAD("import %u: libc value without a libc build-id, or for TLS", i);
        if ((im->flags & LDP_IMP_IFUNC) && !(im->flags & LDP_IMP_LIBC))
            BAD("import %u: IFUNC flag without a libc value", i);
        if (!(im->flags & LDP_IMP_LIBC) && im->value) BAD("import %u: value without LDP_IMP_LIBC", i);
    }
    for (uint32_t i = 0; i < h->nobj; i++) {
        const struct ldp_obj *o = &p->obj[i];
        if (!str_ok(p, o->name) || !str_ok(p, o->path)) BAD("object %u: name out of bounds", i);
        const char *nm = ldp_str(p, o->path);
        if (o->map_start % PAGE || o->map_end % PAGE || o->map_start >= o->map_end ||
            o->map_end > 0x7ffffffff000ul)
            BAD("%s: bad address range %#lx-%#lx", nm, o->map_start, o->map_end);
        for (uint32_t j = 0; j < i; j++)
            if (o->map_start < p->obj[j].map_end && p->obj[j].map_start < o->map_end)
                BAD("%s: range overlaps %s", nm, ldp_str(p, p->obj[j].path));
        if (o->seg_first > h->nseg || o->seg_count > h->nseg - o->seg_first) BAD("%s: segments out of range", nm);
        if (o->fix_first > h->nfix || o->fix_count > h->nfix - o->fix_first) BAD("%s: fixups out of range", nm);
        uint64_t prev = o->map_start;
        for (uint32_t k = o->seg_first; k < o->seg_first + o->seg_count; k++) {
            const struct ldp_seg *s = &p->seg[k];
            if (s->addr % PAGE || s->len % PAGE || s->len == 0 || s->addr < prev || s->addr + s->len > o->map_end)
                BAD("%s: segment %u at %#lx+%#lx out of order or outside its range", nm, k, s->addr, s->len);
            if (s->kind < LDP_SEG_SHARED || s->kind > LDP_SEG_FILE) BAD("%s: segment %u has kind %u", nm, k, s->kind);
            if (s->prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) BAD("%s: segment %u bad protection", nm, k);
            if (s->kind == LDP_SEG_FILE) {
                uint64_t fend = (o->file_size + PAGE - 1) & ~(uint64_t)(PAGE - 1);
                if (s->pool_off % PAGE || s->pool_off >= fend || s->len > fend - s->pool_off)
                    BAD("%s: file segment %u outside the file", nm, k);
                if (s->prot & PROT_WRITE) BAD("%s: file segment %u is writable", nm, k);
            } else if (s->kind != LDP_SEG_ANON) {
                if (s->pool_off % PAGE || s->pool_off > h->pool_size || s->len > h->pool_size - s->pool_off)
                    BAD("%s: segment %u outside the pool", nm, k);
                if (s->kind == LDP_SEG_SHARED && (s->prot & PROT_WRITE))
                    BAD("%s: shared segment %u is writable", nm, k);
            }
            prev = s->addr + s->len;
        }
        if (o->phdr && (o->phdr < o->map_start || o->phdr + (uint64_t)o->phnum * sizeof(Elf64_Phdr) > o->map_end))
            BAD("%s: program headers outside the object", nm);
        if (o->l_ld && (o->l_ld < o->map_start || o->l_ld >= o->map_end)) BAD("%s: PT_DYNAMIC outside the object", nm);
        if (o->tls_tpoff) {
            if (o->tls_tpoff > 0 || (uint64_t)-o->tls_tpoff > ldp_tls_reserve_size ||
                o->tls_memsz > (uint64_t)-o->tls_tpoff || o->tls_filesz > o->tls_memsz)
                BAD("%s: TLS block %ld+%lu outside the static TLS reserve", nm, o->tls_tpoff, o->tls_memsz);
            if (o->tls_filesz && (o->tls_image < o->map_start || o->tls_image + o->tls_filesz > o->map_end))
                BAD("%s: TLS image outside the object", nm);
        }
        if ((o->flags & LDP_OBJ_MAIN) && (o->entry < o->map_start || o->entry >= o->map_end || !o->phdr))
            BAD("%s: entry point or program headers outside the program", nm);
        if ((o->init && (o->init < o->map_start || o->init >= o->map_end)) ||
            (o->fini && (o->fini < o->map_start || o->fini >= o->map_end)))
            BAD("%s: DT_INIT/DT_FINI outside the object", nm);
        uint64_t arrs[3][2] = {{o->preinit_array, o->preinit_count}, {o->init_array, o->init_count},
                               {o->fini_array, o->fini_count}};
        for (int a = 0; a < 3; a++)
            if (arrs[a][1] && (arrs[a][0] < o->map_start || arrs[a][1] > (o->map_end - arrs[a][0]) / 8))
                BAD("%s: init/fini array outside the object", nm);
        for (uint32_t k = o->fix_first; k < o->fix_first + o->fix_count; k++)
            if (check_fix(p, o, &p->fix[k], nglobal, err, errlen) < 0) return -1;
    }
    return check_stubs(p, nglobal, err, errlen);
}
