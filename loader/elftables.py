"""The tables the dynamic section points at: the dynamic symbol table and
its size, the GNU and SysV hash tables, symbol versions, relocations
(decoded by _native.elfscan into typed columns) and, as a fallback for the
symbol count, the section headers.

ElfTables is the second half of loader.elf.ElfFile; it relies on the first
half's checked reads (_unpack, _view, offset_of, dynstr) and on its parsed
dynamic section (dyn). Every count and offset is validated here, once, so
the C consumers (symbol lookup, relocation) can index these views blindly:
- every bucket/chain entry indexes a symbol below nsyms;
- every relocation's symbol index is below nsyms and the bytes it writes
  lie inside page_span; every RELR address too.
"""
import struct
from array import array

from _native import elfscan
from loader.elfconst import (DT, RELA_SIZE, SHDR, SHN_XINDEX, SHT_DYNSYM, SHT_NOBITS,
                             SYM_SIZE, SYM_STRUCT, VERDAUX, VERDEF, VERNAUX, VERNEED,
                             GnuHashTable, Section, Symbol, SysvHashTable, Version, reloc_name)
from loader.errors import ElfError

_SYSVHDR = struct.Struct("<II")
_GNUHDR = struct.Struct("<IIII")

# tags whose values are addresses: bounds for the symbol table when nothing
# else gives its size
_ADDR_TAGS = tuple(DT[t] for t in ("PLTGOT", "HASH", "STRTAB", "RELA", "INIT", "FINI", "JMPREL",
                                   "INIT_ARRAY", "FINI_ARRAY", "PREINIT_ARRAY", "RELR",
                                   "GNU_HASH", "VERSYM", "VERDEF", "VERNEED"))


class Relocations:
    """DT_RELA then DT_JMPREL of one object as typed columns (array.array):
    offset 'Q' (r_offset, link-time address), type 'I', sym 'I' (dynsym
    index), addend 'q'. Entries [0, n_rela) come from DT_RELA, the rest from
    DT_JMPREL, in file order."""

    __slots__ = ("offset", "type", "sym", "addend", "n_rela")

    def __init__(self, offset, type, sym, addend, n_rela):
        self.offset, self.type, self.sym, self.addend, self.n_rela = offset, type, sym, addend, n_rela

    def __len__(self):
        return len(self.offset)

    def histogram(self):
        """{relocation type: count}, sorted by type."""
        return elfscan.type_histogram(self.type)

    def __repr__(self):
        return f"<Relocations {len(self)} ({self.n_rela} RELA + {len(self) - self.n_rela} JMPREL)>"


class ElfTables:
    # ------------------------------------------------------------ hash tables
    @property
    def sysv_hash_table(self):
        """DT_HASH as SysvHashTable(nbucket, nchain, buckets 'I', chains 'I'), or None."""
        return self._cached("sysv_hash", self._sysv_hash)

    def _sysv_hash(self):
        addr = self.dyn.get(DT["HASH"])
        if addr is None:
            return None
        off = self.offset_of(addr, 8, "DT_HASH")
        nbucket, nchain = _SYSVHDR.unpack_from(self.buf, off)
        if nbucket == 0:
            raise ElfError(self.path, "bad DT_HASH (no buckets)")
        off = self.offset_of(addr, 8 + 4 * (nbucket + nchain), "DT_HASH")
        words = self.buf[off + 8:off + 8 + 4 * (nbucket + nchain)].cast("I")
        buckets, chains = words[:nbucket], words[nbucket:]
        if elfscan.u32_range(buckets)[1] >= max(nchain, 1) or elfscan.u32_range(chains)[1] >= max(nchain, 1):
            raise ElfError(self.path, "bad DT_HASH (an entry points past the symbol table)")
        return SysvHashTable(nbucket, nchain, buckets, chains)

    @property
    def gnu_hash_table(self):
        """DT_GNU_HASH as GnuHashTable(nbuckets, symoffset, bloom_size,
        bloom_shift, bloom 'Q', buckets 'I', chains 'I'), or None; chains[i]
        belongs to symbol symoffset + i."""
        return self._cached("gnu_hash", self._gnu_hash)

    def _gnu_hash(self):
        addr = self.dyn.get(DT["GNU_HASH"])
        if addr is None:
            return None
        off = self.offset_of(addr, 16, "DT_GNU_HASH")
        nbuckets, symoffset, bloom_size, bloom_shift = _GNUHDR.unpack_from(self.buf, off)
        if nbuckets == 0:
            raise ElfError(self.path, "bad DT_GNU_HASH (no buckets)")
        if bloom_size == 0 or bloom_size & (bloom_size - 1):
            raise ElfError(self.path, f"bad DT_GNU_HASH (bloom filter size {bloom_size} is not a power of two)")
        if bloom_shift >= 32:
            raise ElfError(self.path, f"bad DT_GNU_HASH (bloom shift {bloom_shift})")
        head = 16 + 8 * bloom_size + 4 * nbuckets
        off = self.offset_of(addr, head, "DT_GNU_HASH")
        bloom = self.buf[off + 16:off + 16 + 8 * bloom_size].cast("Q")
        buckets = self.buf[off + 16 + 8 * bloom_size:off + head].cast("I")
        lo, hi = elfscan.u32_range(buckets)
        if lo and lo < symoffset:
            raise ElfError(self.path, f"bad DT_GNU_HASH (bucket points at symbol {lo}, below symoffset {symoffset})")
        if hi == 0:
            return GnuHashTable(nbuckets, symoffset, bloom_size, bloom_shift, bloom, buckets,
                                memoryview(b"").cast("I"))
        # The chain array runs to the end of the highest bucket's chain, which
        # is the last hashed symbol: that gives the symbol count.
        seg = self._segment_rest(addr + head)
        chains = seg[:len(seg) // 4 * 4].cast("I")
        last = elfscan.first_odd(chains, hi - symoffset)
        if last < 0:
            raise ElfError(self.path, "truncated ELF file (DT_GNU_HASH chain has no end)")
        return GnuHashTable(nbuckets, symoffset, bloom_size, bloom_shift, bloom, buckets, chains[:last + 1])

    def _segment_rest(self, vaddr):
        """File bytes from vaddr to the end of its PT_LOAD's file image."""
        for s in self.loads:
            if s.vaddr <= vaddr <= s.vaddr + s.filesz:
                off = s.offset + vaddr - s.vaddr
                return self.buf[off:s.offset + s.filesz]
        raise ElfError(self.path, f"bad ELF table address {vaddr:#x} (not in a loaded segment)")

    # --------------------------------------------------------------- symbols
    @property
    def nsyms(self):
        """Number of dynamic symbols: what the hash tables cover (the larger,
        if both exist), else the .dynsym section, else up to the next table."""
        return self._cached("nsyms", self._count_syms)

    def _count_syms(self):
        if DT["SYMTAB"] not in self.dyn:
            return 0
        if self.dyn.get(DT["SYMENT"], SYM_SIZE) != SYM_SIZE:
            raise ElfError(self.path, f"bad DT_SYMENT {self.dyn[DT['SYMENT']]} (need {SYM_SIZE})")
        n = None
        if DT["HASH"] in self.dyn:
            n = self.sysv_hash_table.nchain
        gh = self.gnu_hash_table
        if gh is not None and (gh.chains or n is None):
            # a GNU hash covers only the defined symbols: with none (a lib
            # that exports nothing) its symoffset says nothing about the
            # undefined ones relocations still index; the section does
            n = max(n or 0, gh.symoffset + len(gh.chains))
            if not gh.chains:
                n = max(n, self.section_dynsym_count or self._guess_syms())
        if n is None:
            n = self.section_dynsym_count
        if n is None:
            n = self._guess_syms()
        self.offset_of(self.dyn[DT["SYMTAB"]], max(n, 1) * SYM_SIZE, "dynamic symbol table")
        return n

    def _guess_syms(self):
        tab = self.dyn[DT["SYMTAB"]]
        above = [v for t, v in self.dynamic if t in _ADDR_TAGS and v > tab]
        if above:
            end = min(above)
        else:
            end = next((s.vaddr + s.filesz for s in self.loads if s.vaddr <= tab <= s.vaddr + s.filesz), tab)
        return (end - tab) // SYM_SIZE

    @property
    def symtab_offset(self):
        return self.offset_of(self.dyn[DT["SYMTAB"]], max(self.nsyms, 1) * SYM_SIZE) if DT["SYMTAB"] in self.dyn else None

    @property
    def symtab_bytes(self):
        """The nsyms Elf64_Sym records as one memoryview (24 bytes each)."""
        off = self.symtab_offset
        return memoryview(b"") if off is None else self.buf[off:off + self.nsyms * SYM_SIZE]

    def symbol(self, i):
        """Symbol i as a small tuple; for listing and tests, not hot paths."""
        if not 0 <= i < self.nsyms:
            raise IndexError(i)
        name, info, other, shndx, value, size = SYM_STRUCT.unpack_from(self.buf, self.symtab_offset + i * SYM_SIZE)
        return Symbol(self.dynstr(name), info, other, shndx, value, size)

    # -------------------------------------------------------------- versions
    @property
    def versym(self):
        """DT_VERSYM as a 'H' view of nsyms entries, or None."""
        if DT["VERSYM"] not in self.dyn:
            return None
        n = self.nsyms
        if n == 0:
            return memoryview(b"").cast("H")
        off = self.offset_of(self.dyn[DT["VERSYM"]], n * 2, "DT_VERSYM")
        return self.buf[off:off + n * 2].cast("H")

    @property
    def versions(self):
        """{version index: Version} from VERDEF and VERNEED (index 0/1 absent
        unless defined). Walked as ld.so walks them: until vd_next/vn_next is 0."""
        return self._cached("versions", self._parse_versions)

    def _parse_versions(self):
        out = {}
        if DT["VERDEF"] in self.dyn:
            off = self.offset_of(self.dyn[DT["VERDEF"]], VERDEF.size, "DT_VERDEF")
            while True:
                vers, flags, ndx, cnt, h, aux, nxt = self._unpack(VERDEF, off, "version definitions")
                if vers != 1:
                    raise ElfError(self.path, f"unsupported version {vers} of Verdef record")
                if cnt:
                    name_off, _ = self._unpack(VERDAUX, off + aux, "version definitions")
                    out[ndx & 0x7FFF] = Version(ndx & 0x7FFF, self.dynstr(name_off), h, flags, None)
                if not nxt:
                    break
                off += nxt
        if DT["VERNEED"] in self.dyn:
            off = self.offset_of(self.dyn[DT["VERNEED"]], VERNEED.size, "DT_VERNEED")
            while True:
                vers, cnt, file_off, aux, nxt = self._unpack(VERNEED, off, "version needs")
                if vers != 1:
                    raise ElfError(self.path, f"unsupported version {vers} of Verneed record")
                fname = self.dynstr(file_off)
                a = off + aux
                for _ in range(cnt):
                    h, flags, other, name_off, anext = self._unpack(VERNAUX, a, "version needs")
                    out[other & 0x7FFF] = Version(other & 0x7FFF, self.dynstr(name_off), h, flags, fname)
                    if not anext:
                        break
                    a += anext
                if not nxt:
                    break
                off += nxt
        return out

    # ----------------------------------------------------------- relocations
    def _table(self, addr_tag, size, fmt, itemsize, what=None):
        """A typed zero-copy view of `size` bytes at the address in `addr_tag`."""
        if addr_tag not in self.dyn or size == 0:
            return memoryview(b"").cast(fmt)
        what = what or "dynamic table"
        if size % itemsize:
            raise ElfError(self.path, f"bad {what} size {size} (not a multiple of {itemsize})")
        off = self.offset_of(self.dyn[addr_tag], size, what)
        return self.buf[off:off + size].cast(fmt)

    @property
    def rela(self):
        """DT_RELA as a flat 'Q' view: r_offset, r_info, r_addend per triple."""
        return self._table(DT["RELA"], self.dyn.get(DT["RELASZ"], 0), "Q", RELA_SIZE, "DT_RELA")

    @property
    def jmprel(self):
        return self._table(DT["JMPREL"], self.dyn.get(DT["PLTRELSZ"], 0), "Q", RELA_SIZE, "DT_JMPREL")

    @property
    def relr(self):
        return self._table(DT["RELR"], self.dyn.get(DT["RELRSZ"], 0), "Q", 8, "DT_RELR")

    def relocations(self):
        """RELA then JMPREL, decoded and checked (see Relocations)."""
        return self._cached("relocations", self._relocations)

    def _relocations(self):
        d = self.dyn
        if DT["REL"] in d:
            raise ElfError(self.path, "unsupported DT_REL relocations (x86-64 uses DT_RELA)")
        if DT["JMPREL"] in d and d.get(DT["PLTREL"], DT["RELA"]) != DT["RELA"]:
            raise ElfError(self.path, f"unsupported DT_PLTREL {d[DT['PLTREL']]} (need DT_RELA)")
        if d.get(DT["RELAENT"], RELA_SIZE) != RELA_SIZE:
            raise ElfError(self.path, f"bad DT_RELAENT {d[DT['RELAENT']]} (need {RELA_SIZE})")
        rela_size = d.get(DT["RELASZ"], 0) if DT["RELA"] in d else 0
        jmp_size = d.get(DT["PLTRELSZ"], 0) if DT["JMPREL"] in d else 0
        # as glibc's _ELF_DYNAMIC_DO_RELOC: a DT_RELASZ that also covers the
        # PLT relocations at its end does not count them twice
        if rela_size and jmp_size and d[DT["RELA"]] + rela_size == d[DT["JMPREL"]] + jmp_size \
                and rela_size >= jmp_size:
            rela_size -= jmp_size
        rela = self._table(DT["RELA"], rela_size, "Q", RELA_SIZE, "DT_RELA")
        jmp = self._table(DT["JMPREL"], jmp_size, "Q", RELA_SIZE, "DT_JMPREL")
        off, typ, sym, add = elfscan.decode_rela(rela)
        n_rela = len(off)
        if len(jmp):
            cols = elfscan.decode_rela(jmp)
            for a, b in zip((off, typ, sym, add), cols):
                a.extend(b)
        lo, hi = self.page_span
        bad = elfscan.first_outside_reloc(off, typ, lo, hi)
        if bad >= 0:
            raise ElfError(self.path, f"bad relocation #{bad} ({reloc_name(typ[bad])}): "
                                      f"offset {off[bad]:#x} outside the loaded segments")
        top = elfscan.u32_range(sym)[1]
        if top and top >= self.nsyms:
            raise ElfError(self.path, f"bad relocation: symbol index {top} beyond the "
                                      f"{self.nsyms} dynamic symbols")
        return Relocations(off, typ, sym, add, n_rela)

    def relr_addresses(self):
        """DT_RELR expanded into an array 'Q' of link-time addresses, checked
        to lie inside the loaded segments."""
        return self._cached("relr_addresses", self._relr_addresses)

    def _relr_addresses(self):
        if DT["RELR"] not in self.dyn:
            return array("Q")
        if self.dyn.get(DT["RELRENT"], 8) != 8:
            raise ElfError(self.path, f"bad DT_RELRENT {self.dyn[DT['RELRENT']]} (need 8)")
        lo, hi = self.page_span
        try:
            out = elfscan.decode_relr(self.relr, (hi - lo) // 8)
        except ValueError as e:
            raise ElfError(self.path, f"bad DT_RELR ({e})") from None
        bad = elfscan.first_outside(out, lo, hi, 8)
        if bad >= 0:
            raise ElfError(self.path, f"bad DT_RELR: address {out[bad]:#x} outside the loaded segments")
        return out

    # ------------------------------------------------------- section headers
    @property
    def sections(self):
        """Section headers (not needed to load; [] when stripped)."""
        return self._cached("sections", self._parse_sections)

    def _parse_sections(self):
        if self.e_shoff == 0:
            return []
        if self.e_shentsize != SHDR.size:
            raise ElfError(self.path, f"bad ELF section header size {self.e_shentsize}")
        shnum, shstrndx = self.e_shnum, self.e_shstrndx
        if shnum == 0 or shstrndx == SHN_XINDEX:
            # extended numbering: the real values live in section 0
            s0 = self._unpack(SHDR, self.e_shoff, "section headers")
            shnum = shnum or s0[5]
            if shstrndx == SHN_XINDEX:
                shstrndx = s0[6]
        self._view(self.e_shoff, shnum * SHDR.size, "section headers")
        raw = [SHDR.unpack_from(self.buf, self.e_shoff + i * SHDR.size) for i in range(shnum)]
        strs = None
        if shstrndx < shnum and raw[shstrndx][1] != SHT_NOBITS:
            self._view(raw[shstrndx][4], raw[shstrndx][5], "section name table")
            strs = raw[shstrndx][4], raw[shstrndx][4] + raw[shstrndx][5]
        out = []
        for r in raw:
            name = ""
            if strs is not None and r[0] < strs[1] - strs[0]:
                end = self.mm.find(b"\0", strs[0] + r[0], strs[1])
                name = self.mm[strs[0] + r[0]:end if end >= 0 else strs[1]].decode("utf-8", "surrogateescape")
            out.append(Section(name, *r[1:]))
        return out

    @property
    def section_dynsym_count(self):
        """Entries of the SHT_DYNSYM section, or None without one."""
        for s in self.sections:
            if s.type == SHT_DYNSYM:
                if s.entsize not in (0, SYM_SIZE):
                    raise ElfError(self.path, f"bad .dynsym entry size {s.entsize}")
                return s.size // SYM_SIZE
        return None
