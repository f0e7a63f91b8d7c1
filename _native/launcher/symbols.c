/* Symbol lookup in a pooled object's mapped dynamic tables (GNU or SysV
 * hash, with symbol versions), for dlsym/dlvsym and dladdr.  Program start
 * never needs this: the plan's fixups are final. */
#include "ldp.h"
#include <string.h>

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (; *s; s++) h = h * 33 + (unsigned char)*s;
    return h;
}

static uint32_t sysv_hash(const char *s)
{
    uint32_t h = 0, g;
    for (; *s; s++) {
        h = (h << 4) + (unsigned char)*s;
        g = h & 0xf0000000;
        if (g) h ^= g >> 24;
        h &= ~g;
    }
    return h;
}

static int version_ok(struct ldp_rt *r, uint32_t idx, const char *version)
{
    if (!r->versym) return 1;
    uint16_t vs = r->versym[idx];
    if (!version) return !(vs & 0x8000) || (vs & 0x7fff) < 2;
    uint16_t ndx = vs & 0x7fff;
    if (ndx < 2 || !r->verdef) return ndx == 1;   /* unversioned definition satisfies any request */
    const Elf64_Verdef *vd = r->verdef;
    for (;;) {
        if (vd->vd_ndx == ndx) {
            const Elf64_Verdaux *va = (const void *)((const char *)vd + vd->vd_aux);
            return strcmp(r->strtab + va->vda_name, version) == 0;
        }
        if (!vd->vd_next) return 0;
        vd = (const void *)((const char *)vd + vd->vd_next);
    }
}

static int usable(const Elf64_Sym *s)
{
    if (s->st_shndx == SHN_UNDEF && ELF64_ST_TYPE(s->st_info) != STT_TLS) return 0;
    if (s->st_shndx == SHN_UNDEF) return 0;
    int b = ELF64_ST_BIND(s->st_info), t = ELF64_ST_TYPE(s->st_info);
    if (b != STB_GLOBAL && b != STB_WEAK && b != STB_GNU_UNIQUE) return 0;
    if (ELF64_ST_VISIBILITY(s->st_other) == STV_HIDDEN || ELF64_ST_VISIBILITY(s->st_other) == STV_INTERNAL)
        return 0;
    return t == STT_NOTYPE || t == STT_OBJECT || t == STT_FUNC || t == STT_COMMON || t == STT_TLS ||
           t == STT_GNU_IFUNC;
}

const Elf64_Sym *ldp_lookup_in(struct ldp_rt *r, const char *name, const char *version)
{
    if (!r->symtab || !r->strtab) return NULL;
    if (r->gnu_hash) {
        const uint32_t *g = r->gnu_hash;
        uint32_t nb = g[0], symoff = g[1], bloom = g[2], shift = g[3];
        const uint64_t *bl = (const uint64_t *)(g + 4);
        const uint32_t *buckets = (const uint32_t *)(bl + bloom), *chain = buckets + nb;
        uint32_t h = gnu_hash(name);
        uint64_t word = bl[(h / 64) % bloom];
        if (!((word >> (h % 64)) & (word >> ((h >> shift) % 64)) & 1)) return NULL;
        uint32_t i = buckets[h % nb];
        if (i < symoff) return NULL;
        for (;; i++) {
            uint32_t ch = chain[i - symoff];
            if ((ch | 1) == (h | 1)) {
                const Elf64_Sym *s = &r->symtab[i];
                if (usable(s) && strcmp(r->strtab + s->st_name, name) == 0 && version_ok(r, i, version)) return s;
            }
            if (ch & 1) return NULL;
        }
    }
    if (r->sysv_hash) {
        const uint32_t *hs = r->sysv_hash;
        uint32_t nb = hs[0];
        const uint32_t *buckets = hs + 2, *chain = buckets + nb;
        for (uint32_t i = buckets[sysv_hash(name) % nb]; i; i = chain[i]) {
            const Elf64_Sym *s = &r->symtab[i];
            if (usable(s) && strcmp(r->strtab + s->st_name, name) == 0 && version_ok(r, i, version)) return s;
        }
    }
    return NULL;
}

void *ldp_sym_value(struct ldp_rt *r, const Elf64_Sym *s)
{
    int t = ELF64_ST_TYPE(s->st_info);
    if (t == STT_TLS) {
        unsigned char *b = ldp_tls_block(r);
        return b ? b + s->st_value : NULL;
    }
    uint64_t a = (s->st_shndx == SHN_ABS ? 0 : r->o->l_addr) + s->st_value;
    if (t == STT_GNU_IFUNC) return ((void *(*)(void))a)();
    return (void *)a;
}

const Elf64_Sym *ldp_nearest(struct ldp_rt *r, uint64_t addr)
{
    const Elf64_Sym *best = NULL;
    if (!r->symtab) return NULL;
    uint32_t nsyms = ldp_rt_nsyms(r);
    for (uint32_t i = 1; i < nsyms; i++) {
        const Elf64_Sym *s = &r->symtab[i];
        if (s->st_shndx == SHN_UNDEF || s->st_shndx == SHN_ABS || ELF64_ST_TYPE(s->st_info) == STT_TLS) continue;
        uint64_t v = r->o->l_addr + s->st_value;
        if (addr < v) continue;
        if (!(addr < v + s->st_size || (s->st_size == 0 && addr == v))) continue;
        if (!best || s->st_value > best->st_value) best = s;
    }
    return best;
}
