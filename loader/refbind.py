"""Reference binder: which definition each relocation of one object binds
to in a scope, following glibc 2.36's lookup rules (do_lookup_x and
check_match).  It resolves each distinct symbol once and fills typed
columns; it is the slow, readable twin of the Cython engine and what the
plan and image builders fall back to when _native.reloc is not built.

Result columns (array.array, one entry per relocation, DT_RELA then
DT_JMPREL):
    off 'Q' r_offset (link-time vaddr), rtype 'I', symidx 'I', addend 'q',
    target 'i'  scope entry index of the definer; NOSYM for relocations
                without a symbol; UNDEF when nothing defines it
    symval 'Q'  st_value of the definition (link-time, 0 when UNDEF)
    symsize 'Q', symtype 'B' (STT_* of the definition)
and `relr` 'Q': the addresses a DT_RELR table encodes (link-time vaddrs).
"""
import array
import struct

from loader.elf import (SHN_ABS, SHN_UNDEF, STB_LOCAL, STT_COMMON, STT_FUNC,
                        STT_GNU_IFUNC, STT_NOTYPE, STT_OBJECT, STT_TLS, SYM_SIZE,
                        SYM_STRUCT, VERSYM_HIDDEN)
from loader.errors import ElfError

NOSYM, UNDEF = -2, -1
R_COPY, R_JUMP_SLOT = 5, 7
_ALLOWED = {STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_COMMON, STT_TLS, STT_GNU_IFUNC}
STV_PROTECTED = 3


class SymTable:
    """Defined dynamic symbols of one object, by name (built once per file)."""

    def __init__(self, elf):
        self.elf = elf
        n = elf.nsyms
        off = elf.symtab_offset
        self.syms = [SYM_STRUCT.unpack_from(elf.buf, off + i * SYM_SIZE) for i in range(n)]
        self.names = [elf.dynstr_bytes(s[0]) for s in self.syms]
        self.by_name = {}
        for i, s in enumerate(self.syms):
            if i and s[3] != SHN_UNDEF or (i and s[4]):
                self.by_name.setdefault(self.names[i], []).append(i)
        vs = elf.versym
        self.versym = None if vs is None else vs.tolist()
        self.versions = elf.versions

    def version_of(self, i):
        """(name, hidden) of symbol i's version, name None if unversioned."""
        if self.versym is None:
            return None, False
        v = self.versym[i]
        ndx = v & 0x7FFF
        ver = self.versions.get(ndx) if ndx >= 2 else None
        return (ver.name if ver else None), bool(v & VERSYM_HIDDEN)


def symtable(elf):
    t = getattr(elf, "_ldp_symtable", None)
    if t is None:
        t = SymTable(elf)
        elf._ldp_symtable = t
    return t


def _match(tab, name, vname, vhidden, type_class):
    """check_match over one object's definitions of `name`: symidx or None."""
    versioned, nversions = None, 0
    for i in tab.by_name.get(name, ()):
        _, info, _, shndx, value, _ = tab.syms[i]
        stt = info & 0xF
        if (value == 0 and shndx != SHN_ABS and stt != STT_TLS) or stt not in _ALLOWED:
            continue
        if shndx == SHN_UNDEF and (type_class & 1 or value == 0):
            continue
        if info >> 4 == STB_LOCAL:
            continue
        if tab.versym is None:
            return i
        v = tab.versym[i]
        ndx = v & 0x7FFF
        if vname is not None:
            dver = tab.versions.get(ndx) if ndx >= 2 else None
            dname = dver.name if dver else None
            if dname != vname and (vhidden or ndx >= 2 or v & VERSYM_HIDDEN):
                continue
            return i
        if ndx >= 3:
            if not v & VERSYM_HIDDEN:
                nversions += 1
                versioned = i
            continue
        return i
    return versioned if nversions == 1 else None


def lookup(scope_tabs, name, vname, vhidden, type_class, skip=None):
    """First definition in scope order: (entry index, symidx) or None."""
    for k, tab in enumerate(scope_tabs):
        if k == skip:
            continue
        i = _match(tab, name, vname, vhidden, type_class)
        if i is not None:
            return k, i
    return None


class Bound:
    def __init__(self, n):
        self.off = array.array("Q", bytes(8 * n))
        self.rtype = array.array("I", bytes(4 * n))
        self.symidx = array.array("I", bytes(4 * n))
        self.addend = array.array("q", bytes(8 * n))
        self.target = array.array("i", bytes(4 * n))
        self.symval = array.array("Q", bytes(8 * n))
        self.symsize = array.array("Q", bytes(8 * n))
        self.symtype = array.array("B", bytes(n))
        self.relr = array.array("Q")

    def __len__(self):
        return len(self.off)


def decode_relr(words):
    out = array.array("Q")
    where = 0
    for e in words:
        if not e & 1:
            out.append(e)
            where = e + 8
        else:
            a, e = where, e >> 1
            while e:
                if e & 1:
                    out.append(a)
                e >>= 1
                a += 8
            where += 63 * 8
    return out


def bind(scope_elfs, obj):
    """Bind every relocation of scope_elfs[obj] against the scope
    (a list of ElfFile in lookup order)."""
    tabs = [symtable(e) for e in scope_elfs]
    me = tabs[obj]
    elf = scope_elfs[obj]
    words = list(elf.rela) + list(elf.jmprel)
    n = len(words) // 3
    b = Bound(n)
    b.relr = decode_relr(elf.relr)
    cache = {}
    for r in range(n):
        off, info, add = words[3 * r], words[3 * r + 1], words[3 * r + 2]
        t, s = info & 0xFFFFFFFF, info >> 32
        b.off[r], b.rtype[r], b.symidx[r] = off, t, s
        b.addend[r] = add - (1 << 64) if add >= 1 << 63 else add
        if s == 0:
            b.target[r] = NOSYM
            continue
        if s >= len(me.syms):
            raise ElfError(elf.path, f"bad ELF relocation symbol index {s}")
        type_class = 1 if t == R_JUMP_SLOT else 2 if t == R_COPY else 0
        ck = (s, type_class)
        res = cache.get(ck)
        if res is None:
            res = cache[ck] = _resolve(tabs, obj, s, type_class)
        b.target[r], b.symval[r], b.symsize[r], b.symtype[r] = res
    return b


def _resolve(tabs, obj, s, type_class):
    me = tabs[obj]
    _, info, other, shndx, value, size = me.syms[s]
    if info >> 4 == STB_LOCAL or (other & 3) in (1, 2):
        # local, hidden or internal: the object's own symbol
        return obj, value, size, info & 0xF
    if (other & 3) == STV_PROTECTED and shndx != SHN_UNDEF and type_class != 2:
        return obj, value, size, info & 0xF
    vname, vhidden = me.version_of(s)
    if vname is not None:
        # a reference to the object's own VERDEF is still a versioned lookup
        pass
    found = lookup(tabs, me.names[s], vname, vhidden, type_class, skip=obj if type_class == 2 else None)
    if found is None:
        return UNDEF, 0, 0, 0
    k, i = found
    d = tabs[k].syms[i]
    return k, d[4], d[5], d[1] & 0xF


class EngineShape:
    """refbind's result in the shape of _native.reloc.bind's Bindings."""


def bind_like_engine(entries, obj):
    """Same fields and conventions as _native.reloc.bind (runtime `addr`
    and `relr`, target -1/-2/-3, value S, flags), from entries
    [(elf, l_addr, is_glibc)]."""
    elfs = [e[0] for e in entries]
    elf, l_addr = elfs[obj], entries[obj][1]
    rb = bind(elfs, obj)
    n = len(rb)
    out = EngineShape()
    out.count, out.path, out.obj_index, out.l_addr = n, elf.path, obj, l_addr
    out.addr = array.array("Q", (l_addr + x for x in rb.off))
    out.rtype, out.addend, out.symidx, out.symsize = rb.rtype, rb.addend, rb.symidx, rb.symsize
    out.target = array.array("i", bytes(4 * n))
    out.value = array.array("Q", bytes(8 * n))
    out.flags = array.array("B", bytes(n))
    out.relr = array.array("Q", (l_addr + x for x in rb.relr))
    tab = symtable(elf)
    for r in range(n):
        t, tg, s = rb.rtype[r], rb.target[r], rb.symidx[r]
        weak = 16 if s and tab.syms[s][1] >> 4 == 2 else 0
        if tg == NOSYM:
            if t in (0, 8, 37):
                out.target[r] = -1
            else:
                out.target[r] = obj
                out.value[r] = 0 if t in (16, 17, 18, 36) else l_addr
            continue
        if tg == UNDEF:
            out.target[r] = -2 if weak else -3
            out.flags[r] = weak
            continue
        out.target[r] = tg
        st = rb.symtype[r]
        if st == STT_TLS:
            out.value[r] = rb.symval[r]
            out.flags[r] = weak | 8
        else:
            out.value[r] = entries[tg][1] + rb.symval[r]
            out.flags[r] = weak | (4 if st == STT_GNU_IFUNC else 0)
    return out


def is_weak_ref(elf, s):
    return symtable(elf).syms[s][1] >> 4 == 2


def symbol_name(elf, s):
    return symtable(elf).names[s].decode("utf-8", "surrogateescape")
