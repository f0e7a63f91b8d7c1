"""ELF64 x86-64 model over an mmap: headers and the dynamic section as small
Python objects, every per-entry table (symbols, versions, hashes,
relocations) as a zero-copy typed memoryview. Nothing here allocates per
symbol or per relocation; the hot consumers are in _native/.

Every offset and count read from the file is checked before use: a broken
file raises ElfError naming the problem, never IndexError or struct.error.
This module holds the headers, segments, the dynamic section and strings;
loader.elftables adds the tables the dynamic section points at.
"""
import mmap
import os
import stat
import struct

from loader.elfconst import *  # noqa: F401,F403  (the constants are part of this module's API)
from loader.elfconst import (DT, DYN, EHDR, ELFCLASS32, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_DYN,
                             ET_EXEC, NHDR, NT_GNU_BUILD_ID, PAGE_SIZE, PHDR, PT_DYNAMIC,
                             PT_GNU_EH_FRAME, PT_GNU_RELRO, PT_GNU_STACK, PT_INTERP, PT_LOAD,
                             PT_NOTE, PT_TLS, DEFAULT_STACK_FLAGS, DF_BIND_NOW, DF_1_NOW,
                             DynArray, Note, Segment)
from loader.elftables import ElfTables
from loader.errors import ElfError


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


def _page_down(a):
    return a & ~(PAGE_SIZE - 1)


def _page_up(a):
    return (a + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class ElfFile(ElfTables):
    """One ELF64 little-endian x86-64 object, mapped read-only."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
        except FileNotFoundError:
            raise ElfError(self.path, "no such file") from None
        except IsADirectoryError:
            raise ElfError(self.path, "is a directory") from None
        except OSError as e:
            raise ElfError(self.path, (e.strerror or str(e)).lower()) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ElfError(self.path, "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            self.size = st.st_size
            self.st_dev, self.st_ino = st.st_dev, st.st_ino
            self.st_mtime_ns = st.st_mtime_ns     # with dev, ino, size: which file a plan maps text from
            if self.size < 4:
                raise ElfError(self.path, "not an ELF file (too short)")
            try:
                self.mm = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
            except (OSError, ValueError) as e:
                raise ElfError(self.path, f"cannot map file ({e})") from None
        finally:
            os.close(fd)
        self.buf = memoryview(self.mm)
        self._cache = {}
        try:
            self._parse_header()
            self._parse_segments()
            self._parse_dynamic()
        except ElfError:
            self.close()
            raise

    # ------------------------------------------------------------- checked reads
    def _unpack(self, st, off, what):
        """st.unpack_from at a file offset, or ElfError naming `what`."""
        if off < 0 or off + st.size > self.size:
            raise ElfError(self.path, f"truncated ELF file ({what} past end of file)")
        return st.unpack_from(self.buf, off)

    def _view(self, off, size, what):
        """The file bytes [off, off+size) as a memoryview, or ElfError."""
        if off < 0 or size < 0 or off + size > self.size:
            raise ElfError(self.path, f"truncated ELF file ({what} past end of file)")
        return self.buf[off:off + size]

    def _cached(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # ---------------------------------------------------------------- header
    def _parse_header(self):
        if self.buf[:4] != b"\x7fELF":
            raise ElfError(self.path, "not an ELF file (bad magic)")
        if self.size >= 5 and self.buf[4] == ELFCLASS32:
            raise ElfError(self.path, "wrong ELF class: ELFCLASS32 (need ELFCLASS64)")
        if self.size < EHDR.size:
            raise ElfError(self.path, "truncated ELF file (header cut off)")
        (ident, self.e_type, self.e_machine, _, self.e_entry, self.e_phoff,
         self.e_shoff, _, _, self.e_phentsize, self.e_phnum, self.e_shentsize,
         self.e_shnum, self.e_shstrndx) = EHDR.unpack_from(self.buf, 0)
        if ident[4] != ELFCLASS64:
            raise ElfError(self.path, f"wrong ELF class {ident[4]} (need ELFCLASS64)")
        if ident[5] != ELFDATA2LSB:
            raise ElfError(self.path, "wrong ELF data encoding (need little-endian)")
        if self.e_machine != EM_X86_64:
            raise ElfError(self.path, f"wrong ELF machine {self.e_machine} (need x86-64)")
        if self.e_type not in (ET_EXEC, ET_DYN):
            raise ElfError(self.path, f"ELF file is not an executable or shared object (e_type {self.e_type})")
        if self.e_phnum and self.e_phentsize != PHDR.size:
            raise ElfError(self.path, f"bad ELF program header size {self.e_phentsize}")
        if self.e_phoff + self.e_phnum * PHDR.size > self.size:
            raise ElfError(self.path, "truncated ELF file (program headers past end of file)")

    def _parse_segments(self):
        self.segments = [Segment(*PHDR.unpack_from(self.buf, self.e_phoff + i * PHDR.size))
                         for i in range(self.e_phnum)]
        self.loads = [s for s in self.segments if s.type == PT_LOAD]
        if not self.loads:
            raise ElfError(self.path, "ELF file has no loadable segments")
        prev_end = 0
        for s in self.loads:
            if s.offset + s.filesz > self.size:
                raise ElfError(self.path, "truncated ELF file (segment past end of file)")
            if s.filesz > s.memsz:
                raise ElfError(self.path, "bad ELF segment (file size larger than memory size)")
            if (s.vaddr - s.offset) % PAGE_SIZE:
                raise ElfError(self.path, "bad ELF segment (address/offset not page-aligned)")
            if s.vaddr + s.memsz >= 1 << 47:
                raise ElfError(self.path, f"bad ELF segment (address {s.vaddr:#x} beyond user space)")
            # ld.so maps [first, last) as one span: the loads must be ascending
            if s.vaddr < prev_end:
                raise ElfError(self.path, "bad ELF segments (loadable segments overlap or are out of order)")
            prev_end = s.vaddr + s.memsz
        self.interp = None
        for s in self.segments:
            if s.type == PT_INTERP:
                raw = self._view(s.offset, s.filesz, "PT_INTERP")
                self.interp = bytes(raw).split(b"\0")[0].decode("utf-8", "surrogateescape")
                break

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
        return (self.loads[0].vaddr, self.loads[-1].vaddr + self.loads[-1].memsz)

    @property
    def page_span(self):
        """vaddr_span rounded out to pages: what ld.so reserves for the object."""
        return (_page_down(self.loads[0].vaddr), _page_up(self.loads[-1].vaddr + self.loads[-1].memsz))

    def offset_of(self, vaddr, size=1, what=None):
        """File offset holding `size` bytes at `vaddr`; ElfError if they are
        not all in one PT_LOAD's file image (`what` names the table)."""
        for s in self.loads:
            if s.vaddr <= vaddr and vaddr + size <= s.vaddr + s.filesz:
                return s.offset + (vaddr - s.vaddr)
        if what is None:
            raise ElfError(self.path, f"bad ELF table address {vaddr:#x} (not in a loaded segment)")
        raise ElfError(self.path, f"truncated or misplaced {what} ({size} bytes at {vaddr:#x} "
                                  "not inside a loaded segment)")

    def in_memory(self, vaddr, size):
        """True when [vaddr, vaddr+size) lies inside one PT_LOAD's memory."""
        return any(s.vaddr <= vaddr and vaddr + size <= s.vaddr + s.memsz for s in self.loads)

    # ---------------------------------------------------------- other segments
    @property
    def tls(self):
        """PT_TLS (None when absent or empty, as for ld.so), checked: its init
        image (filesz bytes at vaddr) is file-backed, align a power of two."""
        return self._cached("tls", self._tls)

    def _tls(self):
        s = self.segment(PT_TLS)
        if s is None or s.memsz == 0:
            return None
        if s.filesz > s.memsz:
            raise ElfError(self.path, "bad PT_TLS (file size larger than memory size)")
        if s.align & (s.align - 1):
            raise ElfError(self.path, f"bad PT_TLS alignment {s.align} (not a power of two)")
        if s.filesz:
            self.offset_of(s.vaddr, s.filesz)
        return s

    @property
    def tls_image(self):
        """The TLS initialisation image (.tdata) as bytes view; b'' if none."""
        s = self.tls
        if s is None or s.filesz == 0:
            return memoryview(b"")
        off = self.offset_of(s.vaddr, s.filesz)
        return self.buf[off:off + s.filesz]

    @property
    def relro(self):
        """PT_GNU_RELRO (None when absent), checked to lie in loaded memory."""
        return self._cached("relro", self._relro)

    def _relro(self):
        s = self.segment(PT_GNU_RELRO)
        if s is None:
            return None
        lo, hi = self.page_span
        if not (lo <= s.vaddr and s.vaddr + s.memsz <= hi):
            raise ElfError(self.path, "bad PT_GNU_RELRO (outside the loaded segments)")
        return s

    @property
    def eh_frame_hdr(self):
        """PT_GNU_EH_FRAME (.eh_frame_hdr) or None."""
        return self.segment(PT_GNU_EH_FRAME)

    @property
    def stack_flags(self):
        """PF_* flags the object asks for its stack (glibc's default if no PT_GNU_STACK)."""
        s = self.segment(PT_GNU_STACK)
        return DEFAULT_STACK_FLAGS if s is None else s.flags

    def notes(self):
        """Every note of every PT_NOTE segment, as Note(name bytes, type, desc
        view). Like ld.so, a malformed note ends its segment's list instead of
        failing the file: notes never stop an object from loading."""
        return self._cached("notes", self._notes)

    def _notes(self):
        out = []
        for s in self.segments:
            if s.type != PT_NOTE or s.offset + s.filesz > self.size:
                continue
            align = 8 if s.align == 8 else 4
            off, end = s.offset, s.offset + s.filesz
            while off + NHDR.size <= end:
                namesz, descsz, ntype = NHDR.unpack_from(self.buf, off)
                # as glibc's ELF_NOTE_DESC_OFFSET: offsets are aligned from the note's start
                name_off = off + NHDR.size
                desc_off = off + ((NHDR.size + namesz + align - 1) & -align)
                nxt = off + ((desc_off - off + descsz + align - 1) & -align)
                if desc_off + descsz > end:
                    break
                name = bytes(self.buf[name_off:name_off + namesz]).rstrip(b"\0")
                out.append(Note(name, ntype, self.buf[desc_off:desc_off + descsz]))
                off = nxt
        return out

    @property
    def build_id(self):
        """The GNU build-id (bytes) or None."""
        for n in self.notes():
            if n.type == NT_GNU_BUILD_ID and n.name == b"GNU":
                return bytes(n.desc)
        return None

    # ---------------------------------------------------------------- dynamic
    def _parse_dynamic(self):
        self.dynamic = []
        self.dyn = {}
        self.needed = []
        dseg = self.segment(PT_DYNAMIC)
        self.strtab = None
        self.strsz = 0
        if dseg is None:
            self.soname = self.rpath = self.runpath = None
            self.flags = self.flags_1 = 0
            return
        self._view(dseg.offset, dseg.filesz, "dynamic section")
        for off in range(dseg.offset, dseg.offset + dseg.filesz - DYN.size + 1, DYN.size):
            tag, val = DYN.unpack_from(self.buf, off)
            if tag == 0:
                break
            self.dynamic.append((tag, val))
            self.dyn.setdefault(tag, val)
        if DT["STRTAB"] in self.dyn:
            strsz = self.dyn.get(DT["STRSZ"])
            if strsz is None:
                self.strtab = self.offset_of(self.dyn[DT["STRTAB"]], 1, "dynamic string table")
                self.strsz = self.size - self.strtab
            else:
                # ld.so reads strings from memory: the table must be in a segment
                self.strtab = self.offset_of(self.dyn[DT["STRTAB"]], max(strsz, 1), "dynamic string table")
                self.strsz = strsz
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
    def strtab_bytes(self):
        """The whole dynamic string table as a memoryview (for C lookups)."""
        if self.strtab is None:
            return memoryview(b"")
        return self.buf[self.strtab:self.strtab + self.strsz]

    @property
    def bind_now(self):
        return bool(DT["BIND_NOW"] in self.dyn or self.flags & DF_BIND_NOW or self.flags_1 & DF_1_NOW)

    # ------------------------------------------------------ init and fini
    @property
    def init(self):
        """DT_INIT address or None."""
        return self.dyn.get(DT["INIT"])

    @property
    def fini(self):
        return self.dyn.get(DT["FINI"])

    def _dyn_array(self, name):
        vaddr = self.dyn.get(DT[name])
        if vaddr is None:
            return None
        size = self.dyn.get(DT[name + "SZ"], 0)
        if size % 8:
            raise ElfError(self.path, f"bad DT_{name}SZ {size} (not a multiple of 8)")
        if size and not self.in_memory(vaddr, size):
            raise ElfError(self.path, f"bad DT_{name} (outside the loaded segments)")
        return DynArray(vaddr, size // 8)

    @property
    def init_array(self):
        """DynArray(vaddr, count) of DT_INIT_ARRAY, or None."""
        return self._dyn_array("INIT_ARRAY")

    @property
    def fini_array(self):
        return self._dyn_array("FINI_ARRAY")

    @property
    def preinit_array(self):
        return self._dyn_array("PREINIT_ARRAY")

    def array_words(self, arr):
        """The file's words of a DynArray as a 'Q' view: link-time values,
        before RELATIVE/RELR relocation (which ld.so applies first)."""
        if arr is None or arr.count == 0:
            return memoryview(b"").cast("Q")
        off = self.offset_of(arr.vaddr, arr.count * 8)
        return self.buf[off:off + arr.count * 8].cast("Q")

    def close(self):
        self._cache.clear()
        self.buf.release()
        try:
            self.mm.close()
        except BufferError:
            pass  # a caller still holds a table view: the mapping goes with it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<ElfFile {self.path}>"
