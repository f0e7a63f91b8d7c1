"""Pool image of one object: its identity (`image_key`), what lies where in
its reserved range (`layout`), and the bytes the pool keeps for it
(`build_image`): the memory image at one load bias, pre-relocated once
against the object's canonical scope.

The range of an object placed at load bias B is its PT_LOAD span
[B+lo, B+hi), as ld.so would map it, and the pool stores exactly that
(`pool_size` bytes).  Function imports from glibc's family go through the
source's one stub region (loader/stubs.py), shared by every image of the
epoch, so an image has no stub or slot pages of its own and its size is
known before anything is resolved (an allocator needs it before building).

ImageSource protocol (implemented by host_broker over the shared pool and
by loader.localpool over a private file):

    source.place(loaded_object, instance=0, host=None) -> PlacedImage
        ensure the image of `loaded_object` (a resolve.LoadedObject, or
        anything with .elf and .path) exists, building first the images of
        its canonical scope; return where it lives.  `host`: the program
        that dlopens it, appended to its canonical scope when the image is
        built (a plugin binds to its program's symbols; another program
        gets per-process fixups instead).  Same file content (and
        instance) => same PlacedImage for the whole life of the source; the
        key is image_key(elf, instance).  Plans ask for instance n > 0 only
        when a process holds n + 1 objects of identical content.
    source.image_bytes(placed) -> memoryview
        the image's pool bytes (read-only, len == placed.size).
    source.pool_size, source.pool_path
        size of the pool the PlacedImage offsets refer to, and a path (or
        None) a launcher in debug mode can map it from.
    source.stubs
        the epoch's loader.stubs.StubRegion (None: glibc imports are all
        per-process fixups).
"""
import hashlib
import os
import struct
from dataclasses import dataclass, field

from loader.elf import PF_R, PF_W, PF_X, PT_GNU_RELRO, PT_NOTE

PAGE = 4096
NT_GNU_BUILD_ID = 3

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4


def page_down(x):
    return x & ~(PAGE - 1)


def page_up(x):
    return (x + PAGE - 1) & ~(PAGE - 1)


def prot_of(p_flags):
    return ((PROT_READ if p_flags & PF_R else 0) | (PROT_WRITE if p_flags & PF_W else 0)
            | (PROT_EXEC if p_flags & PF_X else 0))


# ------------------------------------------------------------------ identity
def build_id(elf):
    """The NT_GNU_BUILD_ID note as hex, or ''."""
    for seg in elf.segments:
        if seg.type != PT_NOTE:
            continue
        off, end = seg.offset, min(seg.offset + seg.filesz, elf.size)
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf.buf, off)
            name_end = off + 12 + ((namesz + 3) & ~3)
            desc_end = name_end + ((descsz + 3) & ~3)
            if desc_end > end:
                break
            if ntype == NT_GNU_BUILD_ID and bytes(elf.buf[off + 12:off + 12 + namesz]) == b"GNU\0":
                return bytes(elf.buf[name_end:name_end + descsz]).hex()
            off = desc_end
    return ""


_key_cache = {}


def image_key(elf, instance=0):
    """Identity of an image: SHA-256 of the file's bytes, plus its build-id.
    Identical files at different paths share one key; hashing is cached per
    (device, inode, size, mtime) for the life of the process.  `instance`
    n > 0 names the n-th extra copy, for a process that loads two identical
    files as two objects (ld.so does when they have no SONAME): each needs
    an address range of its own."""
    st = os.stat(elf.path)
    ck = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    key = _key_cache.get(ck)
    if key is None:
        h = hashlib.sha256(elf.buf).hexdigest()
        bid = build_id(elf)
        key = h + ("-" + bid if bid else "")
        _key_cache[ck] = key
    return f"{key}@{instance}" if instance else key


# ------------------------------------------------------------------ layout
@dataclass
class ImageLayout:
    lo: int                 # page_down(lowest PT_LOAD vaddr)
    hi: int                 # page_up(end of the highest PT_LOAD)

    @property
    def span(self):
        return self.hi - self.lo

    @property
    def pool_size(self):
        """Bytes the pool keeps: the span."""
        return self.span

    @property
    def map_size(self):
        """Bytes of address space the object occupies in a process."""
        return self.span


def layout(elf):
    lo = page_down(min(s.vaddr for s in elf.loads))
    hi = page_up(max(s.vaddr + s.memsz for s in elf.loads))
    return ImageLayout(lo, hi)


# ------------------------------------------------------------------ image
@dataclass
class ImageInfo:
    """What a plan needs to know about a built image besides its bytes."""
    key: str
    path: str
    base: int                       # load bias the image was relocated for
    layout: ImageLayout
    # import (name, version or None) -> index in the source's stub region,
    # for the function imports the canonical scope binds into glibc's family
    stubs: dict = field(default_factory=dict)
    # page index ranges [first, end) (pages from base+lo) of the span that
    # are expected to stay shareable in a process whose scope binds like
    # the canonical one (ranges keep the broker's journal small)
    shared_ranges: tuple = ()
    nrelocs: int = 0                # relocations seen (relative included)
    # page index ranges [first, end) of the span whose pre-relocated bytes
    # are the file's own (no relocation writes there): a host process maps
    # them from the library file, so the pool need not hold them
    file_ranges: tuple = ()


def page_ranges(pages):
    """Sorted page indices -> ((first, end), ...) runs."""
    out = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return tuple(tuple(r) for r in out)


def shared_pages(info):
    """The set of page indices ImageInfo.shared_ranges covers."""
    return {p for a, b in info.shared_ranges for p in range(a, b)}


@dataclass
class PlacedImage:
    key: str
    base: int          # load bias
    pool_off: int      # pool offset of the image's first byte (address base+lo)
    size: int          # pool bytes (the span)
    info: ImageInfo

    @property
    def map_start(self):
        return self.base + self.info.layout.lo

    @property
    def map_end(self):
        return self.map_start + self.info.layout.map_size


def write_memory_image(elf, lay, out):
    """The PT_LOAD segments as ld.so maps them, into a zero-filled buffer:
    whole file pages (so headers and trailing bytes read the same), then
    zeros from the end of file data to the page end where there is bss."""
    for s in elf.loads:
        if not s.filesz:
            continue
        start = page_down(s.vaddr)
        foff = s.offset - (s.vaddr - start)
        end = page_up(s.vaddr + s.filesz)
        n = min(end - start, elf.size - foff)
        out[start - lay.lo:start - lay.lo + n] = elf.buf[foff:foff + n]
        if s.memsz > s.filesz:
            z0 = s.vaddr + s.filesz - lay.lo
            z1 = min(end - lay.lo, s.vaddr + s.memsz - lay.lo)
            if z1 > z0:
                out[z0:z1] = bytes(z1 - z0)


def memory_image(elf, l_addr):
    """(buffer, runtime address of its first byte): the object's PT_LOAD
    pages as ld.so maps them at load bias `l_addr`, to relocate in place."""
    lay = layout(elf)
    out = bytearray(lay.span)
    write_memory_image(elf, lay, out)
    return out, l_addr + lay.lo


def file_backing(elf, lay):
    """[(first page, end page, file offset of first)] (pages from lo) that a
    PT_LOAD maps from the file whole: pages shared by two segments or
    reaching past the end of the file are left out."""
    runs, owner = [], {}
    for s in elf.loads:
        if not s.filesz:
            continue
        start = page_down(s.vaddr)
        first = (start - lay.lo) // PAGE
        end = (page_up(s.vaddr + s.filesz) - lay.lo) // PAGE
        foff = s.offset - (s.vaddr - start)
        end = min(end, first + (page_up(elf.size) - foff) // PAGE)
        for p in {first, end - 1}:
            owner[p] = owner.get(p, 0) + 1
        runs.append([first, end, foff])
    shared = {p for p, n in owner.items() if n > 1}
    out = []
    for first, end, foff in runs:
        if first in shared:
            first, foff = first + 1, foff + PAGE
        if end - 1 in shared:
            end -= 1
        if first < end:
            out.append((first, end, foff))
    return out


def file_ranges(elf, lay, out, touched):
    """Page ranges of the image `out` equal to the file at the same offset,
    written by no relocation (`touched`: 'B' per page) and read-only in a
    process (read-only segments and RELRO: writable pages are private
    copies of the pool, so the pool must hold them)."""
    from _native import reloc
    from loader.prerelocate import shareable_candidates
    readonly = shareable_candidates(elf, lay)
    pages = []
    for first, end, foff in file_backing(elf, lay):
        same = reloc.same_pages(out, first * PAGE, elf.buf, foff, end - first)
        pages += [p for p in range(first, end) if same[p - first] and not touched[p] and p in readonly]
    return page_ranges(pages)


def relro_range(elf, base):
    r = elf.segment(PT_GNU_RELRO)
    if r is None:
        return 0, 0
    return base + page_down(r.vaddr), base + page_down(r.vaddr + r.memsz)


def build_image(elf, base, canonical_scope, out_buffer, key=None, stubs=None):
    """Write the image of `elf` for load bias `base` into `out_buffer`
    (zero-filled, layout(elf).pool_size bytes) and pre-relocate it against
    `canonical_scope` (scope entry 0 is `elf` itself); glibc function
    imports point at `stubs` (a loader.stubs.StubRegion, or None)."""
    from loader import prerelocate
    lay = layout(elf)
    out = memoryview(out_buffer).cast("B")
    if len(out) < lay.pool_size:
        raise ValueError(f"image buffer too small for {elf.path}: {len(out)} < {lay.pool_size}")
    entries = list(getattr(canonical_scope, "entries", canonical_scope))
    if not entries or entries[0][0] is not elf or entries[0][1] != base:
        raise ValueError(f"canonical scope of {elf.path} must start with the object at its base")
    write_memory_image(elf, lay, out)
    info = ImageInfo(key or image_key(elf), elf.path, base, lay)
    b = prerelocate.prerelocate(elf, base, lay, canonical_scope, out, info, stubs)
    from _native import reloc
    info.file_ranges = file_ranges(elf, lay, out, reloc.pages_touched(b, base + lay.lo, lay.span))
    return info


def pool_ranges(info):
    """Byte ranges [(start, end)] of an image's pool bytes that hold
    something the file does not: everything but info.file_ranges."""
    out, at = [], 0
    for a, b in info.file_ranges:
        if a * PAGE > at:
            out.append((at, a * PAGE))
        at = b * PAGE
    if at < info.layout.pool_size:
        out.append((at, info.layout.pool_size))
    return out
