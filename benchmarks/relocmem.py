"""Relocation-caused private memory: Private_Dirty of an object's pages that
only a loader writes -- its read-only PT_LOADs (text, rodata) and its
PT_GNU_RELRO range -- at their runtime addresses.  Unlike "private memory
with or without .bss", this leaves out .data/.bss, which the program itself
dirties under any loader (python3's own .data is most of what ld.so's
python3 keeps private), so it isolates what the loader causes.

Attribution is per smaps mapping, never split: a mapping counts when it
lies wholly inside those pages, and one that straddles their edge counts
nothing and is reported as "straddling".  There are none in practice,
checked on llc-14 and python3 (ssl, sqlite3, ctypes) under both loaders:
every RELRO end of these objects is page-aligned (ld.bfd pads it), ld.so
mprotects [page_down(start), page_down(end)) on its own so it is its own
mapping, and ldpool's plan maps RELRO as segments of its own (shared pool
pages and per-process fixup pages), with .data starting a new mapping.

Under ldpool the epoch's glibc stub region and the per-process slot table
the stubs jump through (one range for all objects, STUBS_LABEL) are
written only by the launcher.  They take the place of GOT entries, so
their private pages are counted as relocation-caused too (it can only
raise ldpool's figure)."""
from loader.elf import ElfFile
from loader.errors import LdpoolError

PAGE = 4096
PF_W = 2
STUBS_LABEL = "[ldpool glibc stubs]"     # as host_broker/stats.py names the range


def _down(a):
    return a & ~(PAGE - 1)


def _up(a):
    return (a + PAGE - 1) & ~(PAGE - 1)


_spans_cache = {}


def loader_spans(path):
    """(first page vaddr, first file offset, end of image vaddr, [(lo, hi)
    vaddr spans only a loader writes]) of an ELF object, or None when the
    path is not a readable ELF object."""
    if path not in _spans_cache:
        out = None
        try:
            e = ElfFile(path)
            try:
                loads = e.loads
                spans = [(_down(s.vaddr), _up(s.vaddr + s.memsz)) for s in loads if not s.flags & PF_W]
                r = e.relro
                if r is not None and _down(r.vaddr + r.memsz) > _down(r.vaddr):
                    # as ld.so's _dl_protect_relro: a partial last page stays writable
                    spans.append((_down(r.vaddr), _down(r.vaddr + r.memsz)))
                out = (_down(loads[0].vaddr), _down(loads[0].offset),
                       _up(loads[-1].vaddr + loads[-1].memsz), spans)
            finally:
                e.close()
        except (LdpoolError, OSError, ValueError):
            out = None
        _spans_cache[path] = out
    return _spans_cache[path]


def runtime_spans(label, maps, placement=None):
    """The loader-only address ranges of object `label` in one process,
    from its own mappings (address order) and, under ldpool, its placement
    (lo, hi).  The load bias is the start of the object's first mapping
    minus its first PT_LOAD's page-aligned vaddr; None when that mapping is
    not the first segment (the object is mapped some other way)."""
    sp = loader_spans(label)
    if sp is None or not maps:
        return None
    first_page, first_off, end, spans = sp
    lo = placement[0] if placement else maps[0].start
    if not placement and (maps[0].path == "" or maps[0].offset != first_off):
        return None
    bias = lo - first_page
    out = [(bias + a, bias + b) for a, b in spans]
    if placement:
        out += [(placement[0], bias + first_page), (bias + end, placement[1])]
    return [(a, b) for a, b in out if b > a]


def relocation_private(label, maps, placement=None):
    """(Private_Dirty kB of the object's loader-only pages, mappings that
    straddle their edge) for one object's mappings in one process; None when
    the object cannot be laid out (not ELF, unknown bias)."""
    if label == STUBS_LABEL:
        # the epoch's glibc stubs and this process's slot table: only the
        # launcher writes there, so all its private pages count
        return sum(m.Private_Dirty for m in maps), []
    spans = runtime_spans(label, maps, placement)
    if spans is None:
        return None
    kb, straddling = 0, []
    for m in maps:
        inside = sum(max(0, min(b, m.end) - max(a, m.start)) for a, b in spans)
        if inside == m.end - m.start:
            kb += m.Private_Dirty
        elif inside:
            straddling.append(m)
    return kb, straddling
