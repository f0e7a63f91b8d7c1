"""ELF64 x86-64 model over an mmap: headers and the dynamic section as small
Python objects, every per-entry table (symbols, versions, hashes,
relocations) as a zero-copy typed memoryview. Nothing here allocates per
symbol or per relocation; the hot consumers are in _native/.
"""
import mmap
import os
import stat
import struct
from collections import namedtuple

from loader.errors import ElfError

# e_ident / e_machine
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
ET_EXEC, ET_DYN = 2, 3

# program header types
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_PHDR, PT_TLS = 1, 2, 3, 4, 6, 7
PT_GNU_EH_FRAME, PT_GNU_STACK, PT_GNU_RELRO = 0x6474E550, 0x6474E551, 0x6474E552
PF_X, PF_W, PF_R = 1, 2, 4

# dynamic tags
DT = dict(
    NULL=0, NEEDED=1, PLTRELSZ=2, PLTGOT=3, HASH=4, STRTAB=5, SYMTAB=6, RELA=7,
    RELASZ=8, RELAENT=9, STRSZ=10, SYMENT=11, INIT=12, FINI=13, SONAME=14,
    RPATH=15, SYMBOLIC=16, REL=17, RELSZ=18, RELENT=19, PLTREL=20, DEBUG=21,
    TEXTREL=22, JMPREL=23, BIND_NOW=24, INIT_ARRAY=25, FINI_ARRAY=26,
    INIT_ARRAYSZ=27, FINI_ARRAYSZ=28, RUNPATH=29, FLAGS=30, PREINIT_ARRAY=32,
    PREINIT_ARRAYSZ=33, RELRSZ=35, RELR=36, RELRENT=37, GNU_HASH=0x6FFFFEF5,
    VERSYM=0x6FFFFFF0, RELACOUNT=0x6FFFFFF9, FLAGS_1=0x6FFFFFFB,
    VERDEF=0x6FFFFFFC, VERDEFNUM=0x6FFFFFFD, VERNEED=0x6FFFFFFE,
    VERNEEDNUM=0x6FFFFFFF,
)
DF_SYMBOLIC, DF_TEXTREL, DF_BIND_NOW, DF_STATIC_TLS = 0x2, 0x4, 0x8, 0x10
DF_1_NOW, DF_1_NODELETE, DF_1_INITFIRST, DF_1_NOOPEN, DF_1_PIE = 0x1, 0x8, 0x20, 0x40, 0x08000000

# Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16, st_value u64, st_size u64
SYM_SIZE = 24
SYM_STRUCT = struct.Struct("<IBBHQQ")
STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE = 0, 1, 2, 10
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON, STT_TLS, STT_GNU_IFUNC = 0, 1, 2, 3, 4, 5, 6, 10
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
VERSYM_HIDDEN = 0x8000
VER_FLG_BASE, VER_FLG_WEAK = 0x1, 0x2

Segment = namedtuple("Segment", "type flags offset vaddr paddr filesz memsz align")
Symbol = namedtuple("Symbol", "name info other shndx value size")
# idx: version index used in VERSYM; file: needed file (VERNEED) or None (VERDEF)
Version = namedtuple("Version", "idx name hash flags file")

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")


def elf_hash(name: bytes) -> int:
    """SysV ELF hash, as used by DT_HASH and by version records."""
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def gnu_hash(name: bytes) -> int:
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def identify(path):
    """Cheap check used while searching for libraries: (class, machine) of
    the file's ELF header, or None when it is not an ELF file at all."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return head[4], struct.unpack_from("<H", head, 18)[0]


class ElfFile:
    """One ELF64 little-endian x86-64 object, mapped read-only."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ElfError(self.path, "no such file") from None
        except IsADirectoryError:
            raise ElfError(self.path, "is a directory") from None
        except OSError as e:
            raise ElfError(self.path, e.strerror.lower()) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ElfError(self.path, "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            self.size = st.st_size
            self.st_dev, self.st_ino = st.st_dev, st.st_ino
            if self.size < 4:
                raise ElfError(self.path, "not an ELF file (too short)")
            self.mm = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.buf = memoryview(self.mm)
        self._parse_header()
        self._parse_segments()
        self._parse_dynamic()

    # ---------------------------------------------------------------- header
    def _parse_header(self):
        if self.buf[:4] != b"\x7fELF":
            raise ElfError(self.path, "not an ELF file (bad magic)")
        if self.size < _EHDR.size:
            raise ElfError(self.path, "truncated ELF file (header cut off)")
        (ident, self.e_type, self.e_machine, _, self.e_entry, self.e_phoff,
         self.e_shoff, _, _, self.e_phentsize, self.e_phnum, self.e_shentsize,
         self.e_shnum, self.e_shstrndx) = _EHDR.unpack_from(self.buf, 0)
        if ident[4] != ELFCLASS64:
            raise ElfError(self.path, "wrong ELF class: ELFCLASS32 (need ELFCLASS64)")
        if ident[5] != ELFDATA2LSB:
            raise ElfError(self.path, "wrong ELF data encoding (need little-endian)")
        if self.e_machine != EM_X86_64:
            raise ElfError(self.path, f"wrong ELF machine {self.e_machine} (need x86-64)")
        if self.e_type not in (ET_EXEC, ET_DYN):
            raise ElfError(self.path, f"ELF file is not an executable or shared object (e_type {self.e_type})")
        if self.e_phnum and self.e_phentsize != _PHDR.size:
            raise ElfError(self.path, f"bad ELF program header size {self.e_phentsize}")
        if self.e_phoff + self.e_phnum * _PHDR.size > self.size:
            raise ElfError(self.path, "truncated ELF file (program headers past end of file)")

    def _parse_segments(self):
        self.segments = [Segment(*_PHDR.unpack_from(self.buf, self.e_phoff + i * _PHDR.size))
                         for i in range(self.e_phnum)]
        self.loads = [s for s in self.segments if s.type == PT_LOAD]
        if not self.loads:
            raise ElfError(self.path, "ELF file has no loadable segments")
        for s in self.loads:
            if s.offset + s.filesz > self.size:
                raise ElfError(self.path, "truncated ELF file (segment past end of file)")
            if s.filesz > s.memsz:
                raise ElfError(self.path, "bad ELF segment (file size larger than memory size)")
        self.interp = None
        for s in self.segments:
            if s.type == PT_INTERP:
                if s.offset + s.filesz > self.size:
                    raise ElfError(self.path, "truncated ELF file (PT_INTERP past end of file)")
                self.interp = bytes(self.buf[s.offset:s.offset + s.filesz]).split(b"\0")[0].decode("utf-8", "replace")

    def segment(self, ptype):
        """The first program header of that type, or None."""
        for s in self.segments:
            if s.type == ptype:
                return s
        return None

    @property
    def is_pie(self):
        return self.e_type == ET_DYN and self.interp is not None

    @property
    def vaddr_span(self):
        """(lowest, highest) virtual address covered by PT_LOAD segments."""
        return (min(s.vaddr for s in self.loads), max(s.vaddr + s.memsz for s in self.loads))

    def offset_of(self, vaddr, size=1):
        """File offset holding `size` bytes at `vaddr`; ElfError if unmapped."""
        for s in self.loads:
            if s.vaddr <= vaddr and vaddr + size <= s.vaddr + s.filesz:
                return s.offset + (vaddr - s.vaddr)
        raise ElfError(self.path, f"bad ELF table address {vaddr:#x} (not in a loaded segment)")

    # ---------------------------------------------------------------- dynamic
    def _parse_dynamic(self):
        self.dynamic = []
        self.dyn = {}
        self.needed = []
        dseg = self.segment(PT_DYNAMIC)
        if dseg is None:
            self.strtab = None
            self.soname = self.rpath = self.runpath = None
            self.flags = self.flags_1 = 0
            return
        if dseg.offset + dseg.filesz > self.size:
            raise ElfError(self.path, "truncated ELF file (dynamic section past end of file)")
        for off in range(dseg.offset, dseg.offset + dseg.filesz - _DYN.size + 1, _DYN.size):
            tag, val = _DYN.unpack_from(self.buf, off)
            if tag == 0:
                break
            self.dynamic.append((tag, val))
            self.dyn.setdefault(tag, val)
        if DT["STRTAB"] in self.dyn:
            self.strtab = self.offset_of(self.dyn[DT["STRTAB"]])
            self.strsz = self.dyn.get(DT["STRSZ"], self.size - self.strtab)
            if self.strtab + self.strsz > self.size:
                raise ElfError(self.path, "truncated ELF file (dynamic string table past end of file)")
        else:
            self.strtab = None
        self.needed = [self.dynstr(v) for t, v in self.dynamic if t == DT["NEEDED"]]
        self.soname = self._dynstr_tag("SONAME")
        self.rpath = self._dynstr_tag("RPATH")
        self.runpath = self._dynstr_tag("RUNPATH")
        self.flags = self.dyn.get(DT["FLAGS"], 0)
        self.flags_1 = self.dyn.get(DT["FLAGS_1"], 0)

    def _dynstr_tag(self, name):
        v = self.dyn.get(DT[name])
        return None if v is None else self.dynstr(v)

    def dynstr_bytes(self, off):
        if self.strtab is None or off >= self.strsz:
            raise ElfError(self.path, f"bad ELF string offset {off}")
        start = self.strtab + off
        end = self.mm.find(b"\0", start, self.strtab + self.strsz)
        if end < 0:
            raise ElfError(self.path, "unterminated string in ELF dynamic string table")
        return self.mm[start:end]

    def dynstr(self, off):
        return self.dynstr_bytes(off).decode("utf-8", "surrogateescape")

    @property
    def bind_now(self):
        return bool(DT["BIND_NOW"] in self.dyn or self.flags & DF_BIND_NOW or self.flags_1 & DF_1_NOW)

    # ---------------------------------------------------------------- tables
    def _table(self, addr_tag, size, fmt, itemsize):
        """A typed zero-copy view of `size` bytes at the address in `addr_tag`."""
        if addr_tag not in self.dyn or size == 0:
            return memoryview(b"").cast(fmt)
        if size % itemsize:
            raise ElfError(self.path, "bad ELF table size (not a multiple of its entry size)")
        off = self.offset_of(self.dyn[addr_tag], size)
        return self.buf[off:off + size].cast(fmt)

    @property
    def rela(self):
        """DT_RELA as a flat 'Q' view: r_offset, r_info, r_addend per triple."""
        return self._table(DT["RELA"], self.dyn.get(DT["RELASZ"], 0), "Q", 24)

    @property
    def jmprel(self):
        return self._table(DT["JMPREL"], self.dyn.get(DT["PLTRELSZ"], 0), "Q", 24)

    @property
    def relr(self):
        return self._table(DT["RELR"], self.dyn.get(DT["RELRSZ"], 0), "Q", 8)

    @property
    def nsyms(self):
        """Number of dynamic symbols, from the hash tables as ld.so knows it."""
        if hasattr(self, "_nsyms"):
            return self._nsyms
        n = 0
        if DT["HASH"] in self.dyn:
            n = struct.unpack_from("<I", self.buf, self.offset_of(self.dyn[DT["HASH"]] + 4, 4))[0]
        elif DT["GNU_HASH"] in self.dyn:
            off = self.offset_of(self.dyn[DT["GNU_HASH"]], 16)
            nbuckets, symoffset, bloom_size, _ = struct.unpack_from("<IIII", self.buf, off)
            boff = off + 16 + bloom_size * 8
            buckets = self.buf[boff:boff + nbuckets * 4].cast("I")
            if len(buckets) != nbuckets:
                raise ElfError(self.path, "truncated ELF file (GNU hash table)")
            last = max(buckets, default=0)
            if last >= symoffset:
                coff = boff + nbuckets * 4
                while True:
                    if coff + (last - symoffset) * 4 + 4 > self.size:
                        raise ElfError(self.path, "truncated ELF file (GNU hash chain)")
                    if struct.unpack_from("<I", self.buf, coff + (last - symoffset) * 4)[0] & 1:
                        break
                    last += 1
                n = last + 1
            else:
                n = symoffset
        if n:
            self.offset_of(self.dyn[DT["SYMTAB"]], n * SYM_SIZE)  # raises when truncated
        self._nsyms = n
        return n

    @property
    def symtab_offset(self):
        return self.offset_of(self.dyn[DT["SYMTAB"]], max(self.nsyms, 1) * SYM_SIZE) if DT["SYMTAB"] in self.dyn else None

    def symbol(self, i):
        """Symbol i as a small tuple; for listing and tests, not hot paths."""
        if not 0 <= i < self.nsyms:
            raise IndexError(i)
        name, info, other, shndx, value, size = SYM_STRUCT.unpack_from(self.buf, self.symtab_offset + i * SYM_SIZE)
        return Symbol(self.dynstr(name), info, other, shndx, value, size)

    @property
    def versym(self):
        return self._table(DT["VERSYM"], self.nsyms * 2, "H", 2) if DT["VERSYM"] in self.dyn else None

    @property
    def versions(self):
        """{version index: Version} from VERDEF and VERNEED (index 0/1 absent)."""
        if hasattr(self, "_versions"):
            return self._versions
        out = {}
        if DT["VERDEF"] in self.dyn:
            off = self.offset_of(self.dyn[DT["VERDEF"]], 20)
            for _ in range(self.dyn.get(DT["VERDEFNUM"], 0)):
                _, flags, ndx, cnt, h, aux, nxt = struct.unpack_from("<HHHHIII", self.buf, off)
                if cnt:
                    name_off = struct.unpack_from("<I", self.buf, off + aux)[0]
                    out[ndx & 0x7FFF] = Version(ndx & 0x7FFF, self.dynstr(name_off), h, flags, None)
                if not nxt:
                    break
                off += nxt
                if off + 20 > self.size:
                    raise ElfError(self.path, "truncated ELF file (version definitions)")
        if DT["VERNEED"] in self.dyn:
            off = self.offset_of(self.dyn[DT["VERNEED"]], 16)
            for _ in range(self.dyn.get(DT["VERNEEDNUM"], 0)):
                _, cnt, file_off, aux, nxt = struct.unpack_from("<HHIII", self.buf, off)
                fname = self.dynstr(file_off)
                a = off + aux
                for _ in range(cnt):
                    if a + 16 > self.size:
                        raise ElfError(self.path, "truncated ELF file (version needs)")
                    h, flags, other, name_off, anext = struct.unpack_from("<IHHII", self.buf, a)
                    out[other & 0x7FFF] = Version(other & 0x7FFF, self.dynstr(name_off), h, flags, fname)
                    if not anext:
                        break
                    a += anext
                if not nxt:
                    break
                off += nxt
                if off + 16 > self.size:
                    raise ElfError(self.path, "truncated ELF file (version needs)")
        self._versions = out
        return out

    def close(self):
        self.buf.release()
        self.mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<ElfFile {self.path}>"
