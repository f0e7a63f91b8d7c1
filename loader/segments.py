"""How each page of a placed object is mapped in a process (plan.h's
ldp_seg): text, rodata and RELRO shared read-only from the pool unless a
fixup writes there; .data private copy-on-write from the pool; bss past
the file data anonymous; holes between segments PROT_NONE; stub pages
shared r-x; slot pages anonymous read-write."""
from loader import planformat as pf
from loader.elf import PF_W, PT_GNU_RELRO
from loader.image import PAGE, PROT_EXEC, PROT_READ, PROT_WRITE, page_down, page_up, prot_of


def page_kinds(elf, base, fix_pages):
    """{page address: (kind, prot)} over the PT_LOAD span."""
    pages = {}
    relro = elf.segment(PT_GNU_RELRO)
    r0 = r1 = 0
    if relro is not None:
        r0, r1 = base + page_down(relro.vaddr), base + page_down(relro.vaddr + relro.memsz)
    for s in elf.loads:
        start = base + page_down(s.vaddr)
        file_end = base + page_up(s.vaddr + s.filesz) if s.filesz else start
        end = base + page_up(s.vaddr + s.memsz)
        prot = prot_of(s.flags)
        for a in range(start, end, PAGE):
            in_relro = r0 <= a < r1
            p = PROT_READ if in_relro else prot
            if a >= file_end:
                kind = pf.SEG_ANON
            elif (in_relro or not s.flags & PF_W) and a not in fix_pages:
                kind = pf.SEG_SHARED
            else:
                kind = pf.SEG_PRIVATE
            old = pages.get(a)
            if old is not None:
                # two segments on one page: ld.so maps the later over the
                # earlier's tail; keep its bytes private and both rights
                kind, p = pf.SEG_PRIVATE, p | old[1]
            pages[a] = (kind, p)
    return pages


def object_segments(elf, placed, fix_pages):
    base = placed.base
    lay = placed.info.layout
    span0 = base + lay.lo
    kinds = page_kinds(elf, base, fix_pages)
    rows = []

    def emit(addr, length, off, prot, kind):
        if rows:
            a, n, o, p, k = rows[-1]
            if k == kind and p == prot and a + n == addr and (kind == pf.SEG_ANON or o + n == off):
                rows[-1] = (a, n + length, o, p, k)
                return
        rows.append((addr, length, off, prot, kind))

    for a in range(span0, span0 + lay.span, PAGE):
        kind, prot = kinds.get(a, (pf.SEG_ANON, 0))
        emit(a, PAGE, placed.pool_off + (a - span0) if kind != pf.SEG_ANON else 0, prot, kind)
    if lay.stub_size:
        emit(span0 + lay.stub_off, lay.stub_size, placed.pool_off + lay.stub_off,
             PROT_READ | PROT_EXEC, pf.SEG_SHARED)
        emit(span0 + lay.slot_off, lay.slot_size, 0, PROT_READ | PROT_WRITE, pf.SEG_ANON)
    return rows
