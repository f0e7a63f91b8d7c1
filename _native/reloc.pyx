"""x86-64 relocation: binding (who defines what) and application.

API (arrays are typed `array.array`s, one element per relocation, never a
Python object per relocation):

bind(scope, obj_index) -> Bindings
    For every relocation of object `obj_index` of `scope` (a
    loader.scope.Scope): DT_RELA first, then DT_JMPREL; DT_RELR separately.
    Bindings attributes:
      count, nrela, njmprel, obj_index, path, l_addr
      addr    'Q'  runtime address P = l_addr + r_offset
      rtype   'I'  R_X86_64_* type
      target  'i'  defining object index in the scope; -1 = no symbol
                   (NONE/RELATIVE/IRELATIVE), -2 = undefined weak (value 0),
                   -3 = undefined non-weak (see `undefined`).  A relocation
                   against a local/hidden symbol, or against symbol 0 of a
                   TLS/symbolic type, has target = obj_index itself.
      value   'Q'  S: l_addr(def) + st_value (st_value alone for SHN_ABS and
                   for TLS symbols: the offset inside the module's block);
                   for symbol 0 of a non-TLS symbolic type, l_addr (glibc).
      addend  'q'  r_addend
      symsize 'Q'  st_size of the definition (SIZE32/64; COPY copies
                   min(symsize, the requester's own st_size) bytes, as glibc)
      symidx  'I'  symbol index in the requester's dynsym (for names)
      flags   'B'  F_LOOKUP (bound through a scope lookup: glibc would print
                   it with LD_DEBUG=bindings), F_PROTECTED (protected
                   reference), F_IFUNC (definition is STT_GNU_IFUNC: the value
                   is the resolver's address), F_TLS (TLS definition),
                   F_WEAKREF (the reference is weak)
      relr    'Q'  runtime addresses that DT_RELR relocates (+= l_addr)
      undefined    list of (symbol name, requester path, version or None),
                   one per symbol with target -3; undefined_message(*entry)
                   gives glibc's "OBJ: undefined symbol: NAME, version V"
    Unknown relocation types and broken tables raise loader.errors.ElfError
    naming the object.

apply(image, image_addr, bindings, mask=None, tls_modid=None, tls_tpoff=None,
      tlsdesc_resolver=0, relr=True) -> deferred 'I'
    MODE 1.  Writes, into the writable buffer `image` that holds the memory
    image starting at runtime address `image_addr`, the results of the
    relocations whose `mask` ('B', len == count; None = all) entry is
    non-zero, and (if `relr`) all RELR words.  Returns the indices it could
    not do ahead of time and left untouched: COPY, IRELATIVE, anything bound
    to an IFUNC, undefined non-weak symbols (-3), TLS relocations when
    `tls_modid` / `tls_tpoff` ('q' per scope index: module id and static TLS
    offset from the thread pointer, negative) are not given, and TLSDESC when
    `tlsdesc_resolver` (address of the static TLSDESC resolver) is 0.
    Values as glibc computes them: RELATIVE l_addr + A; 64 S + A; GLOB_DAT,
    JUMP_SLOT S; 32/32S S + A, PC32 S + A - P (range checked: LdpoolError),
    PC64 S + A - P; SIZE32/64 st_size + A; DTPMOD64 M; DTPOFF64 st_value + A;
    TPOFF64 T + st_value + A; TLSDESC {resolver, T + st_value + A}.  An
    undefined weak TLS reference writes nothing.

compare(image, image_addr, bindings, mask=None, tls_modid=None,
        tls_tpoff=None, tlsdesc_resolver=0) -> (differ 'I', values 'Q', deferred 'I')
    MODE 2.  Same computation as apply, without writing: `differ` are the
    indices whose value differs from what `image` holds (the canonical
    pre-relocated image), `values[j]` the word to write at
    bindings.addr[differ[j]] (4-byte types: the low 32 bits; TLSDESC: the
    second word, the first being the resolver); `deferred` as in apply.

pages_touched(bindings, image_addr, size, select=None, page_size=4096) -> 'B'
    Per page of the image: 1 where a selected relocation ('B' per
    relocation, e.g. those left to per-process fixups) writes a byte, 0 for
    pages that stay identical to the pre-relocated image (shareable).

undefined_message(name, path, version=None) -> str
    glibc's words for an undefined symbol (see Bindings.undefined).
"""
from cpython cimport array
import array as pyarray
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t, int8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memcmp

from _native.symbols cimport (SymScope, ObjTab, ldp_sym, TC_NORMAL, TC_PLT, TC_COPY,
                              LK_FOUND, LK_WEAK_UNDEF, LK_UNDEF, LK_LOCAL, LK_BAD)
from loader.errors import ElfError, LdpoolError

F_LOOKUP, F_PROTECTED, F_IFUNC, F_TLS, F_WEAKREF = 1, 2, 4, 8, 16

cdef enum:
    R_NONE = 0
    R_64 = 1
    R_PC32 = 2
    R_COPY = 5
    R_GLOB_DAT = 6
    R_JUMP_SLOT = 7
    R_RELATIVE = 8
    R_32 = 10
    R_32S = 11
    R_DTPMOD64 = 16
    R_DTPOFF64 = 17
    R_TPOFF64 = 18
    R_PC64 = 24
    R_SIZE32 = 32
    R_SIZE64 = 33
    R_TLSDESC = 36
    R_IRELATIVE = 37

RTYPE_NAMES = {
    0: "NONE", 1: "64", 2: "PC32", 3: "GOT32", 4: "PLT32", 5: "COPY", 6: "GLOB_DAT",
    7: "JUMP_SLOT", 8: "RELATIVE", 9: "GOTPCREL", 10: "32", 11: "32S", 12: "16",
    13: "PC16", 14: "8", 15: "PC8", 16: "DTPMOD64", 17: "DTPOFF64", 18: "TPOFF64",
    19: "TLSGD", 20: "TLSLD", 21: "DTPOFF32", 22: "GOTTPOFF", 23: "TPOFF32",
    24: "PC64", 25: "GOTOFF64", 26: "GOTPC32", 32: "SIZE32", 33: "SIZE64",
    34: "GOTPC32_TLSDESC", 35: "TLSDESC_CALL", 36: "TLSDESC", 37: "IRELATIVE",
    38: "RELATIVE64", 41: "GOTPCRELX", 42: "REX_GOTPCRELX",
}


def rtype_name(t):
    return "R_X86_64_" + RTYPE_NAMES.get(t, str(t))


cdef array.array _u64 = pyarray.array('Q')
cdef array.array _i64 = pyarray.array('q')
cdef array.array _u32 = pyarray.array('I')
cdef array.array _i32 = pyarray.array('i')
cdef array.array _u8 = pyarray.array('B')


cdef inline int type_class(uint32_t t) noexcept nogil:
    if t == R_JUMP_SLOT or t == R_DTPMOD64 or t == R_DTPOFF64 or t == R_TPOFF64 or t == R_TLSDESC:
        return TC_PLT
    if t == R_COPY:
        return TC_COPY
    return TC_NORMAL


cdef inline bint is_tls_type(uint32_t t) noexcept nogil:
    return t == R_DTPMOD64 or t == R_DTPOFF64 or t == R_TPOFF64 or t == R_TLSDESC


cdef inline bint is_symbolic(uint32_t t) noexcept nogil:
    return (t == R_64 or t == R_GLOB_DAT or t == R_JUMP_SLOT or t == R_PC32 or t == R_32
            or t == R_32S or t == R_PC64 or t == R_SIZE32 or t == R_SIZE64 or t == R_COPY
            or is_tls_type(t))


class Bindings:
    """Result of bind(); see the module docstring."""

    def __repr__(self):
        return f"<Bindings {self.path}: {self.count} relocations, {len(self.relr)} relr>"


def bind(scope, int obj_index):
    cdef SymScope ss = scope.native
    if not 0 <= obj_index < ss.n:
        raise IndexError(obj_index)
    elf = scope.elf(obj_index)
    cdef const ObjTab *req = &ss.objs[obj_index]
    cdef uint64_t l_addr = req.l_addr
    cdef const uint64_t[::1] rela = elf.rela
    cdef const uint64_t[::1] jmprel = elf.jmprel
    cdef Py_ssize_t nrela = rela.shape[0] // 3, njmp = jmprel.shape[0] // 3
    cdef Py_ssize_t n = nrela + njmp, k, j
    cdef array.array a_addr = array.clone(_u64, n, False), a_val = array.clone(_u64, n, False)
    cdef array.array a_size = array.clone(_u64, n, False), a_add = array.clone(_i64, n, False)
    cdef array.array a_type = array.clone(_u32, n, False), a_sym = array.clone(_u32, n, False)
    cdef array.array a_tgt = array.clone(_i32, n, False), a_flags = array.clone(_u8, n, False)
    cdef uint64_t *addr = <uint64_t *>a_addr.data.as_ulonglongs
    cdef uint64_t *val = <uint64_t *>a_val.data.as_ulonglongs
    cdef uint64_t *size = <uint64_t *>a_size.data.as_ulonglongs
    cdef int64_t *add = <int64_t *>a_add.data.as_longlongs
    cdef uint32_t *typ = <uint32_t *>a_type.data.as_uints
    cdef uint32_t *sym = <uint32_t *>a_sym.data.as_uints
    cdef int32_t *tgt = <int32_t *>a_tgt.data.as_ints
    cdef uint8_t *flg = <uint8_t *>a_flags.data.as_uchars
    # per-symbol cache, one per type class that repeats (normal, PLT)
    cdef uint32_t ns = max(req.nsyms, 1)
    cdef int8_t *c_st = <int8_t *>calloc(2 * ns, 1)
    cdef int32_t *c_obj = <int32_t *>calloc(2 * ns, sizeof(int32_t))
    cdef uint32_t *c_sym = <uint32_t *>calloc(2 * ns, sizeof(uint32_t))
    cdef int8_t *c_prot = <int8_t *>calloc(2 * ns, 1)
    cdef const uint64_t *r
    cdef uint64_t info
    cdef uint32_t t, si, dsym = 0
    cdef int tc, st = 0, dobj = 0, prot = 0, slot, bad = -1, unknown = -1
    cdef const ObjTab *d
    cdef const ldp_sym *s
    cdef uint8_t f
    undefined_idx = []
    if c_st == NULL or c_obj == NULL or c_sym == NULL or c_prot == NULL:
        free(c_st); free(c_obj); free(c_sym); free(c_prot)
        raise MemoryError()
    try:
        with nogil:
            for k in range(n):
                r = &rela[3 * k] if k < nrela else &jmprel[3 * (k - nrela)]
                info = r[1]
                t = <uint32_t>info
                si = <uint32_t>(info >> 32)
                addr[k] = l_addr + r[0]
                add[k] = <int64_t>r[2]
                typ[k] = t
                sym[k] = si
                size[k] = 0
                flg[k] = 0
                if t == R_RELATIVE or t == R_NONE or t == R_IRELATIVE:
                    tgt[k] = -1
                    val[k] = 0
                    continue
                if not is_symbolic(t):
                    unknown = <int>k
                    break
                if si == 0:
                    tgt[k] = obj_index
                    val[k] = 0 if is_tls_type(t) else l_addr
                    continue
                if si >= req.nsyms:
                    bad = <int>k
                    break
                tc = type_class(t)
                if tc == TC_COPY:
                    st = ss.resolve_ref(obj_index, si, tc, &dobj, &dsym, &prot)
                else:
                    slot = tc * ns + si
                    if c_st[slot] == 0:
                        c_st[slot] = ss.resolve_ref(obj_index, si, tc, <int *>&c_obj[slot], &c_sym[slot], &prot)
                        c_prot[slot] = prot
                    st = c_st[slot]
                    dobj = c_obj[slot]
                    dsym = c_sym[slot]
                    prot = c_prot[slot]
                if st == LK_BAD:
                    bad = <int>k
                    break
                f = 16 if (req.symtab[si].st_info >> 4) == 2 else 0
                if st == LK_WEAK_UNDEF or st == LK_UNDEF:
                    tgt[k] = -2 if st == LK_WEAK_UNDEF else -3
                    val[k] = 0
                    flg[k] = f
                    continue
                d = &ss.objs[dobj]
                s = &d.symtab[dsym]
                tgt[k] = dobj
                size[k] = s.st_size
                if st == LK_FOUND:
                    f |= 1
                if prot:
                    f |= 2
                if (s.st_info & 0xf) == 6:
                    f |= 8
                    val[k] = s.st_value
                elif s.st_shndx == 0xfff1:
                    val[k] = s.st_value
                else:
                    val[k] = d.l_addr + s.st_value
                    if (s.st_info & 0xf) == 10 and s.st_shndx != 0:
                        f |= 4
                flg[k] = f
        if unknown >= 0:
            raise ElfError(elf.path, f"unsupported relocation type {rtype_name(typ[unknown])} ({typ[unknown]})")
        if bad >= 0:
            raise ElfError(elf.path, f"bad symbol index {sym[bad]} in relocation {bad}")
    finally:
        free(c_st); free(c_obj); free(c_sym); free(c_prot)
    b = Bindings()
    b.obj_index, b.path, b.l_addr = obj_index, elf.path, l_addr
    b.count, b.nrela, b.njmprel = n, nrela, njmp
    b.addr, b.rtype, b.target, b.value, b.addend = a_addr, a_type, a_tgt, a_val, a_add
    b.symsize, b.symidx, b.flags = a_size, a_sym, a_flags
    b.relr = _relr(elf.relr, l_addr)
    seen = set()
    undefined = []
    for k in range(n):
        if tgt[k] == -3 and sym[k] not in seen:
            seen.add(sym[k])
            undefined.append((elf.symbol(sym[k]).name, elf.path, _ref_version(elf, sym[k])))
    b.undefined = undefined
    return b


def _ref_version(elf, symidx):
    """The version a reference asks for (None: unversioned), as glibc's
    l_versions: VERNEED entries and non-base VERDEF entries."""
    vs = elf.versym
    if vs is None:
        return None
    v = elf.versions.get(vs[symidx] & 0x7FFF)
    if v is None or (v.file is None and v.flags & 1):
        return None
    return v.name


def undefined_message(name, path, version=None):
    """glibc's text for an undefined symbol (after "PROG: symbol lookup
    error: "): `OBJ: undefined symbol: NAME[, version VER]`."""
    return f"{path}: undefined symbol: {name}" + (f", version {version}" if version else "")


cdef array.array _relr(const uint64_t[::1] relr, uint64_t l_addr):
    cdef Py_ssize_t i, m = 0, n = relr.shape[0]
    cdef uint64_t e, where = 0
    cdef int b
    for i in range(n):
        e = relr[i]
        if e & 1 == 0:
            m += 1
        else:
            e >>= 1
            while e:
                m += e & 1
                e >>= 1
    cdef array.array out = array.clone(_u64, m, False)
    cdef uint64_t *o = <uint64_t *>out.data.as_ulonglongs
    m = 0
    for i in range(n):
        e = relr[i]
        if e & 1 == 0:
            where = l_addr + e
            o[m] = where
            m += 1
            where += 8
        else:
            for b in range(63):
                if (e >> (b + 1)) & 1:
                    o[m] = where + 8 * b
                    m += 1
            where += 63 * 8
    return out


include "reloc_apply.pxi"


def pages_touched(b, uint64_t image_addr, uint64_t size, select=None, uint64_t page_size=4096):
    """'B' per page of [image_addr, image_addr+size): 1 where a selected
    relocation (all, RELR included, when `select` is None) writes a byte."""
    cdef Py_ssize_t npages = (size + page_size - 1) // page_size, i, n = b.count
    cdef array.array out = array.clone(_u8, npages, True)
    cdef uint8_t *o = <uint8_t *>out.data.as_uchars
    cdef const uint64_t[::1] addr = b.addr
    cdef const uint32_t[::1] typ = b.rtype
    cdef const uint64_t[::1] relr = b.relr
    cdef const uint8_t[::1] sel
    cdef bint all_ = select is None
    cdef uint64_t a, w, p
    if not all_:
        sel = select
    with nogil:
        for i in range(n):
            if not all_ and not sel[i]:
                continue
            if typ[i] == R_NONE:
                continue
            w = 16 if typ[i] == R_TLSDESC else (4 if typ[i] == R_PC32 or typ[i] == R_32
                                               or typ[i] == R_32S or typ[i] == R_SIZE32 else 8)
            a = addr[i]
            if a + w <= image_addr or a >= image_addr + size:
                continue
            p = (a - image_addr) // page_size if a >= image_addr else 0
            o[p] = 1
            p = (a + w - 1 - image_addr) // page_size
            if p < <uint64_t>npages:
                o[p] = 1
        if all_:
            for i in range(relr.shape[0]):
                a = relr[i]
                if image_addr <= a < image_addr + size:
                    o[(a - image_addr) // page_size] = 1
                    p = (a + 7 - image_addr) // page_size
                    if p < <uint64_t>npages:
                        o[p] = 1
    return out


def same_pages(const uint8_t[::1] image, Py_ssize_t image_off, const uint8_t[::1] file,
               Py_ssize_t file_off, Py_ssize_t npages, Py_ssize_t page_size=4096):
    """'B' per page: 1 where image[image_off + i*page ...] holds the same
    page as file[file_off + i*page ...]; past the end of the file a page
    compares as the file's bytes followed by zeros (what mmap shows)."""
    cdef array.array out = array.clone(_u8, npages, True)
    cdef uint8_t *o = <uint8_t *>out.data.as_uchars
    cdef Py_ssize_t i, a, f, n, k, isz = image.shape[0], fsz = file.shape[0]
    cdef bint same
    with nogil:
        for i in range(npages):
            a = image_off + i * page_size
            f = file_off + i * page_size
            if a < 0 or a + page_size > isz or f < 0 or f >= fsz:
                continue
            n = page_size if f + page_size <= fsz else fsz - f
            same = memcmp(&image[a], &file[f], n) == 0
            k = n
            while same and k < page_size:
                same = image[a + k] == 0
                k += 1
            o[i] = same
    return out
