"""How each page of a placed object is mapped in a process (plan.h's
ldp_seg): text, rodata and RELRO shared read-only from the pool unless a
fixup writes there; .data private copy-on-write from the pool; bss past
the file data anonymous; holes between segments PROT_NONE.  With `from_file`, shared
pages whose image bytes are the file's own (ImageInfo.file_ranges) are
mapped from the library file instead, as ld.so would: the pool then need
not hold them at all.  Works on page intervals, so
its cost follows the number of segments and fixup pages, not the size."""
import bisect

from loader import planformat as pf
from loader.elf import PF_W, PT_GNU_RELRO
from loader.image import (PAGE, PROT_EXEC, PROT_READ, PROT_WRITE, file_backing, page_down,
                          page_up, prot_of)


def _intervals(elf, base):
    """[(start, end, kind, prot)] of the PT_LOAD span before fixups, in
    address order, non-overlapping."""
    relro = elf.segment(PT_GNU_RELRO)
    r0 = r1 = 0
    if relro is not None:
        r0, r1 = base + page_down(relro.vaddr), base + page_down(relro.vaddr + relro.memsz)
    out = []

    def add(a, b, kind, prot):
        if a >= b:
            return
        if out and a < out[-1][1]:
            # two segments share a page: ld.so maps the later over the
            # earlier's tail; keep that page private with both rights
            pa, pb, pk, pp = out.pop()
            if pa < a:
                out.append((pa, a, pk, pp))
            out.append((a, min(pb, a + PAGE), pf.SEG_PRIVATE, pp | prot))
            a = min(pb, a + PAGE)
            if a >= b:
                return
        out.append((a, b, kind, prot))

    for s in elf.loads:
        start = base + page_down(s.vaddr)
        file_end = base + page_up(s.vaddr + s.filesz) if s.filesz else start
        end = base + page_up(s.vaddr + s.memsz)
        prot = prot_of(s.flags)
        writable = s.flags & PF_W
        lo_r, hi_r = max(start, r0), min(file_end, r1)
        if lo_r < hi_r:
            add(start, lo_r, pf.SEG_PRIVATE if writable else pf.SEG_SHARED, prot)
            add(lo_r, hi_r, pf.SEG_SHARED, PROT_READ)
            add(hi_r, file_end, pf.SEG_PRIVATE if writable else pf.SEG_SHARED, prot)
        else:
            add(start, file_end, pf.SEG_PRIVATE if writable else pf.SEG_SHARED, prot)
        add(max(file_end, start), end, pf.SEG_ANON, prot)
    return out


def _file_runs(elf, info):
    """[(first page, end page, file offset of first)] of info.file_ranges."""
    backing = file_backing(elf, info.layout)
    out = []
    for a, b in info.file_ranges:
        for first, end, foff in backing:
            lo, hi = max(a, first), min(b, end)
            if lo < hi:
                out.append((lo, hi, foff + (lo - first) * PAGE))
    return sorted(out)


def object_segments(elf, placed, fix_pages, from_file=False):
    base = placed.base
    lay = placed.info.layout
    span0 = base + lay.lo
    fixes = sorted(fix_pages)
    rows = []
    files = _file_runs(elf, placed.info) if from_file else []

    def emit(addr, end, kind, prot):
        if addr >= end:
            return
        if kind == pf.SEG_SHARED and files:
            i = bisect.bisect_right(files, ((addr - span0) // PAGE, 1 << 62)) - 1
            i = max(i, 0)
            while i < len(files) and addr < end:
                first, last, foff = files[i]
                lo, hi = max(addr, span0 + first * PAGE), min(end, span0 + last * PAGE)
                i += 1
                if lo >= hi:
                    continue
                put(addr, lo, kind, prot, placed.pool_off + (addr - span0))
                put(lo, hi, pf.SEG_FILE, prot, foff + (lo - span0 - first * PAGE))
                addr = hi
        put(addr, end, kind, prot, placed.pool_off + (addr - span0) if kind != pf.SEG_ANON else 0)

    def put(addr, end, kind, prot, off):
        if addr >= end:
            return
        if rows:
            a, n, o, p, k = rows[-1]
            if k == kind and p == prot and a + n == addr and (kind == pf.SEG_ANON or o + n == off):
                rows[-1] = (a, n + end - addr, o, p, k)
                return
        rows.append((addr, end - addr, off, prot, kind))

    cur = span0
    for a, b, kind, prot in _intervals(elf, base):
        emit(cur, a, pf.SEG_ANON, 0)                 # a hole
        if kind == pf.SEG_SHARED:
            i = bisect.bisect_left(fixes, a)
            while i < len(fixes) and fixes[i] < b:
                emit(a, fixes[i], kind, prot)
                emit(fixes[i], fixes[i] + PAGE, pf.SEG_PRIVATE, prot)
                a = fixes[i] + PAGE
                i += 1
        emit(a, b, kind, prot)
        cur = b
    emit(cur, span0 + lay.span, pf.SEG_ANON, 0)
    return rows
