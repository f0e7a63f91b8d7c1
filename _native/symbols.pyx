"""Symbol lookup exactly as glibc 2.36's elf/dl-lookup.c does it.

`SymScope(entries, scopes, main_is_exec)` holds, for each object of a
lookup scope, C pointers into its ELF file mapping (dynsym, dynstr, versym,
GNU hash with bloom filter, SysV hash) and its version table.  `entries` is
a list of `(ElfFile, l_addr)`; `scopes[i]` is the list of scope lists object
i searches as a requester (glibc's l_scope: the global search list, then
for an RTLD_LOCAL object its own dependency closure), each a list of
indices into `entries`.

The C entry points (`lookup`, `resolve_ref`) are what reloc.pyx calls in
its loop; `SymScope.py_lookup` is the slow-path convenience behind
`loader.scope.Scope.lookup`.

Rules reproduced (do_lookup_x / check_match / _dl_lookup_symbol_x):
- definitions with st_value 0 (unless SHN_ABS or TLS), non-data/code types,
  and, for PLT-class lookups, SHN_UNDEF entries (PLT addresses of the
  executable) do not match;
- versioned reference: the definition's version must equal it, except that
  an unversioned (index 0/1) non-hidden definition matches, and an object
  without versions matches anything;
- unversioned reference: definitions of version index 0, 1 or 2 match at
  once; others (if not hidden) only when they are the single versioned
  candidate in that object;
- a hidden or local match ends the search in that object (not the chain);
- COPY lookups skip the executable; weak definitions count like global
  ones (no LD_DYNAMIC_WEAK); STB_GNU_UNIQUE behaves as first-in-scope;
- a protected reference binds to the requester's own definition.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memchr, strcmp

from loader.errors import ElfError

cdef extern from *:
    """
    #define LDP_STT(i) ((i) & 0xf)
    #define LDP_STB(i) ((i) >> 4)
    #define LDP_VIS(o) ((o) & 0x3)
    """
    int LDP_STT(uint8_t) nogil
    int LDP_STB(uint8_t) nogil
    int LDP_VIS(uint8_t) nogil

DEF SHN_UNDEF = 0
DEF SHN_ABS = 0xfff1
DEF STT_TLS = 6
DEF STB_LOCAL = 0
DEF STB_GLOBAL = 1
DEF STB_WEAK = 2
DEF STB_GNU_UNIQUE = 10
DEF STV_INTERNAL = 1
DEF STV_HIDDEN = 2
DEF STV_PROTECTED = 3
# NOTYPE OBJECT FUNC COMMON TLS GNU_IFUNC
DEF ALLOWED_STT = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 5) | (1 << 6) | (1 << 10)

DT_HASH = 4
DT_SYMBOLIC = 16
DT_GNU_HASH = 0x6FFFFEF5
DT_VERSYM = 0x6FFFFFF0
VER_FLG_BASE = 1


cdef inline uint32_t c_gnu_hash(const char *s) noexcept nogil:
    cdef uint32_t h = 5381
    while s[0]:
        h = h * 33 + <uint8_t>s[0]
        s += 1
    return h


cdef inline uint32_t c_elf_hash(const char *s) noexcept nogil:
    cdef uint32_t h = 0, g
    while s[0]:
        h = (h << 4) + <uint8_t>s[0]
        g = h & 0xf0000000u
        if g:
            h ^= g >> 24
        h &= ~g
        s += 1
    return h


cdef inline bint name_eq(const char *name, const ObjTab *o, uint32_t off) noexcept nogil:
    """strcmp bounded by the string table (a fuzzed table may lack its NUL)."""
    cdef uint64_t i = off
    if off >= o.strsz:
        return False
    while i < o.strsz:
        if o.strtab[i] != name[0]:
            return False
        if name[0] == 0:
            return True
        i += 1
        name += 1
    return False


cdef inline const char *sym_name(const ObjTab *o, uint32_t symidx) noexcept nogil:
    """The symbol's name if it is NUL-terminated inside dynstr, else NULL."""
    cdef uint32_t off = o.symtab[symidx].st_name
    if off >= o.strsz or memchr(o.strtab + off, 0, o.strsz - off) == NULL:
        return NULL
    return o.strtab + off


cdef int check_match(const char *name, const ldp_sym *ref, uint32_t ver_hash,
                     const char *ver_name, int type_class, const ldp_sym *sym,
                     uint32_t symidx, const ObjTab *o, int *num_versions,
                     int *versioned) noexcept nogil:
    cdef int stt = LDP_STT(sym.st_info)
    cdef uint16_t ndx
    if (sym.st_value == 0 and sym.st_shndx != SHN_ABS and stt != STT_TLS) \
            or (type_class & (sym.st_shndx == SHN_UNDEF)):
        return 0
    if ((1 << stt) & ALLOWED_STT) == 0:
        return 0
    if sym != ref and not name_eq(name, o, sym.st_name):
        return 0
    if o.versym == NULL:
        return 1
    ndx = o.versym[symidx] & 0x7fff
    if ver_hash != 0:
        if ndx < o.nver and o.ver_hash[ndx] != 0:
            if o.ver_hash[ndx] != ver_hash or strcmp(o.ver_name[ndx], ver_name) != 0:
                return 0
        # unversioned definition: accepted unless it is hidden
        elif o.versym[symidx] & 0x8000:
            return 0
        return 1
    if ndx >= (2 if type_class & TC_NEWEST else 3):
        if (o.versym[symidx] & 0x8000) == 0:
            if num_versions[0] == 0:
                versioned[0] = <int>symidx
            num_versions[0] += 1
        return 0
    return 1


cdef class SymScope:
    def __cinit__(self, entries, scopes, main_is_exec=False):
        cdef int i, j, k, total
        cdef ObjTab *o
        self.n = len(entries)
        self.keep = []
        self.objs = <ObjTab *>calloc(max(self.n, 1), sizeof(ObjTab))
        total = sum(len(l) for per in scopes for l in per)
        self.lists = <int *>calloc(max(total, 1), sizeof(int))
        if self.objs == NULL or self.lists == NULL:
            raise MemoryError()
        k = 0
        for i in range(self.n):
            elf, l_addr = entries[i]
            o = &self.objs[i]
            self._fill(o, elf, l_addr)
            o.is_exec = bool(main_is_exec and i == 0)
            per = scopes[i]
            o.nscopes = len(per)
            o.scope_start = <int *>calloc(max(o.nscopes, 1), sizeof(int))
            o.scope_len = <int *>calloc(max(o.nscopes, 1), sizeof(int))
            if o.scope_start == NULL or o.scope_len == NULL:
                raise MemoryError()
            for j in range(o.nscopes):
                o.scope_start[j] = k
                o.scope_len[j] = len(per[j])
                for idx in per[j]:
                    if not 0 <= idx < self.n:
                        raise ValueError(f"scope index {idx} out of range")
                    self.lists[k] = idx
                    k += 1

    def __dealloc__(self):
        cdef int i
        if self.objs != NULL:
            for i in range(self.n):
                free(self.objs[i].ver_hash)
                free(<void *>self.objs[i].ver_name)
                free(self.objs[i].scope_start)
                free(self.objs[i].scope_len)
            free(self.objs)
        free(self.lists)

    cdef _fill(self, ObjTab *o, elf, uint64_t l_addr):
        cdef const uint8_t[::1] mem = elf.buf
        cdef const uint8_t *base = &mem[0]
        cdef uint64_t off, size = elf.size, symoff, stroff, vsoff
        cdef const uint32_t *hdr
        cdef uint32_t nb, so, bs, nchain
        self.keep.append(mem)
        o.l_addr = l_addr
        if elf.strtab is None or elf.symtab_offset is None or elf.nsyms == 0:
            return  # nothing to find in it: nsyms 0, no buckets
        o.nsyms = elf.nsyms
        symoff = elf.symtab_offset
        stroff = elf.strtab
        o.symtab = <const ldp_sym *>(base + symoff)
        o.strtab = <const char *>(base + stroff)
        o.strsz = elf.strsz
        if DT_VERSYM in elf.dyn:
            vsoff = elf.offset_of(elf.dyn[DT_VERSYM], o.nsyms * 2)
            o.versym = <const uint16_t *>(base + vsoff)
            self._versions(o, elf)
        if DT_GNU_HASH in elf.dyn:
            off = elf.offset_of(elf.dyn[DT_GNU_HASH], 16)
            hdr = <const uint32_t *>(base + off)
            nb, so, bs = hdr[0], hdr[1], hdr[2]
            o.gnu_shift = hdr[3] & 63
            if bs == 0 or (bs & (bs - 1)) or off + 16 + <uint64_t>bs * 8 + <uint64_t>nb * 4 > size:
                raise ElfError(elf.path, "bad GNU hash table (bloom filter or buckets past end of file)")
            if so > o.nsyms or off + 16 + <uint64_t>bs * 8 + <uint64_t>nb * 4 + <uint64_t>(o.nsyms - so) * 4 > size:
                raise ElfError(elf.path, "bad GNU hash table (chains past end of file)")
            o.gnu_nbuckets, o.gnu_symoffset, o.gnu_bloom_mask = nb, so, bs - 1
            o.gnu_bloom = <const uint64_t *>(base + off + 16)
            o.gnu_buckets = <const uint32_t *>(base + off + 16 + bs * 8)
            o.gnu_chain = o.gnu_buckets + nb - so
        elif DT_HASH in elf.dyn:
            off = elf.offset_of(elf.dyn[DT_HASH], 8)
            hdr = <const uint32_t *>(base + off)
            nb, nchain = hdr[0], hdr[1]
            if off + 8 + (<uint64_t>nb + nchain) * 4 > size:
                raise ElfError(elf.path, "bad SysV hash table (past end of file)")
            o.sysv_nbucket, o.sysv_nchain = nb, min(nchain, o.nsyms)
            o.sysv_buckets = hdr + 2
            o.sysv_chain = hdr + 2 + nb
            self.has_sysv_only = 1

    cdef _versions(self, ObjTab *o, elf):
        # glibc's l_versions: VERDEF entries except the base one, and VERNEED.
        vers = {k: v for k, v in elf.versions.items() if not (v.file is None and v.flags & VER_FLG_BASE)}
        o.nver = (max(vers) + 1) if vers else 0
        if o.nver == 0:
            return
        o.ver_hash = <uint32_t *>calloc(o.nver, sizeof(uint32_t))
        o.ver_name = <const char **>calloc(o.nver, sizeof(char *))
        if o.ver_hash == NULL or o.ver_name == NULL:
            raise MemoryError()
        for k, v in vers.items():
            b = v.name.encode("utf-8", "surrogateescape")
            self.keep.append(b)
            o.ver_hash[k] = v.hash if v.hash else 1  # keep "has a version" even for a zero hash
            o.ver_name[k] = <const char *>b

    cdef int lookup(self, const char *name, uint32_t gnuh, uint32_t ver_hash,
                    const char *ver_name, int type_class, int undef,
                    const ldp_sym *ref, int *out_obj, uint32_t *out_sym) noexcept nogil:
        """_dl_lookup_symbol_x without the protected fix-up: first match over
        the requester's scope lists.  Returns 1 when found."""
        cdef const ObjTab *req = &self.objs[undef]
        cdef int s
        cdef uint32_t oldh = 0
        cdef bint have_oldh = False
        for s in range(req.nscopes):
            if self.lookup_list(&self.lists[req.scope_start[s]], req.scope_len[s], name, gnuh,
                                ver_hash, ver_name, type_class, ref, out_obj, out_sym,
                                &oldh, &have_oldh):
                return 1
        return 0

    cdef int lookup_list(self, const int *lst, int n, const char *name, uint32_t gnuh,
                         uint32_t ver_hash, const char *ver_name, int type_class,
                         const ldp_sym *ref, int *out_obj, uint32_t *out_sym,
                         uint32_t *oldh, bint *have_oldh) noexcept nogil:
        """do_lookup_x over one search list (objects indices `lst`)."""
        cdef const ObjTab *o
        cdef int i, m, num_versions, versioned, found
        cdef uint32_t symidx, bucket, h, iters
        cdef uint64_t word
        cdef const ldp_sym *sym
        for i in range(n):
            m = lst[i]
            o = &self.objs[m]
            if (type_class & TC_COPY) and o.is_exec:
                continue
            num_versions = 0
            versioned = -1
            found = -1
            if o.gnu_bloom != NULL:
                if o.gnu_nbuckets == 0:
                    continue
                word = o.gnu_bloom[(gnuh >> 6) & o.gnu_bloom_mask]
                if (word >> (gnuh & 63)) & (word >> ((gnuh >> o.gnu_shift) & 63)) & 1:
                    bucket = o.gnu_buckets[gnuh % o.gnu_nbuckets]
                    if bucket != 0 and bucket >= o.gnu_symoffset:
                        symidx = bucket
                        while symidx < o.nsyms:
                            h = o.gnu_chain[symidx]
                            if ((h ^ gnuh) >> 1) == 0:
                                if check_match(name, ref, ver_hash, ver_name, type_class,
                                               &o.symtab[symidx], symidx, o,
                                               &num_versions, &versioned):
                                    found = <int>symidx
                                    break
                            if h & 1:
                                break
                            symidx += 1
            elif o.sysv_buckets != NULL:
                if o.sysv_nbucket == 0:
                    continue
                if not have_oldh[0]:
                    oldh[0] = c_elf_hash(name)
                    have_oldh[0] = True
                symidx = o.sysv_buckets[oldh[0] % o.sysv_nbucket]
                iters = 0
                while symidx != 0 and symidx < o.sysv_nchain and iters <= o.sysv_nchain:
                    if check_match(name, ref, ver_hash, ver_name, type_class,
                                   &o.symtab[symidx], symidx, o,
                                   &num_versions, &versioned):
                        found = <int>symidx
                        break
                    symidx = o.sysv_chain[symidx]
                    iters += 1
            else:
                continue
            if found < 0 and num_versions == 1:
                found = versioned
            if found < 0:
                continue
            sym = &o.symtab[found]
            if LDP_VIS(sym.st_other) == STV_HIDDEN or LDP_VIS(sym.st_other) == STV_INTERNAL:
                continue
            if LDP_STB(sym.st_info) == STB_GLOBAL or LDP_STB(sym.st_info) == STB_WEAK \
                    or LDP_STB(sym.st_info) == STB_GNU_UNIQUE:
                out_obj[0] = m
                out_sym[0] = <uint32_t>found
                return 1
        return 0

    cdef int resolve_ref(self, int undef, uint32_t symidx, int type_class,
                         int *out_obj, uint32_t *out_sym, int *protected) noexcept nogil:
        """RESOLVE_MAP for symbol `symidx` of object `undef`: LK_LOCAL,
        LK_FOUND, LK_WEAK_UNDEF, LK_UNDEF or LK_BAD."""
        cdef const ObjTab *req = &self.objs[undef]
        cdef const ldp_sym *ref
        cdef const char *name
        cdef uint32_t vh = 0
        cdef const char *vn = NULL
        cdef uint16_t ndx
        cdef int pobj
        cdef uint32_t psym
        protected[0] = 0
        if symidx >= req.nsyms:
            return LK_BAD
        ref = &req.symtab[symidx]
        if LDP_STB(ref.st_info) == STB_LOCAL or LDP_VIS(ref.st_other) == STV_HIDDEN \
                or LDP_VIS(ref.st_other) == STV_INTERNAL:
            out_obj[0] = undef
            out_sym[0] = symidx
            return LK_LOCAL
        name = sym_name(req, symidx)
        if name == NULL:
            return LK_BAD
        if req.versym != NULL:
            ndx = req.versym[symidx] & 0x7fff
            if ndx < req.nver and req.ver_hash[ndx] != 0:
                vh = req.ver_hash[ndx]
                vn = req.ver_name[ndx]
        if not self.lookup(name, c_gnu_hash(name), vh, vn, type_class, undef, ref, out_obj, out_sym):
            return LK_WEAK_UNDEF if LDP_STB(ref.st_info) == STB_WEAK else LK_UNDEF
        if LDP_VIS(ref.st_other) == STV_PROTECTED:
            protected[0] = 1
            if type_class == TC_PLT:
                if out_obj[0] != undef:
                    out_obj[0] = undef
                    out_sym[0] = symidx
            elif self.lookup(name, c_gnu_hash(name), vh, vn, TC_PLT, undef, ref, &pobj, &psym) \
                    and pobj != undef:
                out_obj[0] = undef
                out_sym[0] = symidx
        return LK_FOUND

    # ------------------------------------------------------------ slow path
    def py_lookup(self, name, version, int requester, int type_class=TC_NORMAL,
                  bint newest=False, indices=None):
        """(def_index, sym_index) or None: lookup of `name` (str) with
        `version` (str or None) in the scope of object `requester`, or, if
        `indices` is given, in that search list alone (dlsym on a handle).
        newest: DL_LOOKUP_RETURN_NEWEST, as dlsym: an unversioned lookup
        takes the default version instead of the oldest."""
        cdef bytes bname = name.encode("utf-8", "surrogateescape")
        cdef bytes bver = version.encode("utf-8", "surrogateescape") if version else b""
        cdef int obj, k, found
        cdef uint32_t sym, oldh = 0
        cdef bint have_oldh = False
        cdef uint32_t vh = c_elf_hash(bver) if version else 0
        cdef int *lst
        if not 0 <= requester < self.n:
            raise IndexError(requester)
        if version and vh == 0:
            vh = 1
        if newest:
            type_class |= TC_NEWEST
        if indices is None:
            found = self.lookup(bname, c_gnu_hash(bname), vh, bver, type_class, requester, NULL, &obj, &sym)
        else:
            lst = <int *>calloc(max(len(indices), 1), sizeof(int))
            if lst == NULL:
                raise MemoryError()
            try:
                for k, idx in enumerate(indices):
                    if not 0 <= idx < self.n:
                        raise IndexError(idx)
                    lst[k] = idx
                found = self.lookup_list(lst, len(indices), bname, c_gnu_hash(bname), vh, bver,
                                         type_class, NULL, &obj, &sym, &oldh, &have_oldh)
            finally:
                free(lst)
        return (obj, sym) if found else None

    def py_resolve_ref(self, int requester, uint32_t symidx, int type_class=TC_NORMAL):
        """(status, def_index, sym_index, protected) for the requester's own
        symbol `symidx`, as a relocation against it binds."""
        cdef int obj = -1, prot = 0, st
        cdef uint32_t sym = 0
        if not 0 <= requester < self.n:
            raise IndexError(requester)
        st = self.resolve_ref(requester, symidx, type_class, &obj, &sym, &prot)
        return st, obj, sym, prot

    def symbol_value(self, int obj, uint32_t symidx):
        """Runtime value of a definition: l_addr + st_value (st_value alone
        for SHN_ABS and TLS symbols)."""
        cdef const ObjTab *o = &self.objs[obj]
        cdef const ldp_sym *s = &o.symtab[symidx]
        if symidx >= o.nsyms:
            raise IndexError(symidx)
        if s.st_shndx == SHN_ABS or LDP_STT(s.st_info) == STT_TLS:
            return s.st_value
        return o.l_addr + s.st_value

    def name(self, int obj, uint32_t symidx):
        """Name of symbol `symidx` of object `obj` (str; '' when broken)."""
        if not 0 <= obj < self.n or symidx >= self.objs[obj].nsyms:
            raise IndexError((obj, symidx))
        cdef const char *p = sym_name(&self.objs[obj], symidx)
        return p.decode("utf-8", "surrogateescape") if p != NULL else ""

    @property
    def count(self):
        return self.n


def gnu_hash(name):
    b = name.encode() if isinstance(name, str) else bytes(name)
    return c_gnu_hash(b)
