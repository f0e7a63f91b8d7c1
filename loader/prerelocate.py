"""Mode 1: relocate a pool image in place, once, against its canonical
scope.  What is the same in every process is written; what is not (values
in glibc, TLS, IFUNC results, COPY) is left for the plan's per-process
fixups, and the pages it lands on are not expected to stay shareable.

JUMP_SLOTs and function-address GLOB_DAT / R_X86_64_64 that bind into
glibc's family get the address of the epoch's stub for that import
(loader/stubs.py), so the GOT holds no per-process address for them
either; glibc data (stdout, environ...) stays per process.
"""
import struct

from loader.elf import PF_W, PT_GNU_RELRO
from loader.errors import ElfError

R_NONE, R_64, R_PC32, R_32, R_COPY, R_GLOB_DAT, R_JUMP_SLOT, R_RELATIVE = 0, 1, 2, 10, 5, 6, 7, 8
R_32S, R_DTPMOD64, R_DTPOFF64, R_TPOFF64, R_PC64 = 11, 16, 17, 18, 24
R_SIZE32, R_SIZE64, R_TLSDESC, R_IRELATIVE = 32, 33, 36, 37
F_IFUNC, F_TLS, F_WEAKREF = 4, 8, 16
T_NOSYM, T_WEAK_UNDEF, T_UNDEF = -1, -2, -3

_Q = struct.Struct("<Q")
_I = struct.Struct("<I")


def scope_entries(scope):
    """[(elf, l_addr, is_glibc)] of a loader.scope.Scope or a plain list."""
    return list(getattr(scope, "entries", scope))


def bind_entries(scope, obj):
    """_native.reloc.bind of scope[obj]; `scope` is a loader.scope.Scope or
    its entries [(elf, l_addr, is_glibc)]."""
    from _native import reloc
    from loader.scope import Scope
    if not isinstance(scope, Scope):
        scope = Scope(scope)
    return reloc.bind(scope, obj)


def static_value(entries, b, r):
    """(value, width) a relocation stores in every process whose scope
    binds like this one, or None when it is only known in the process."""
    t = b.rtype[r]
    a = b.addend[r]
    tgt = b.target[r]
    if t == R_RELATIVE:
        return b.l_addr + a, 8
    if t == R_SIZE64 or t == R_SIZE32:
        return b.symsize[r] + a, (8 if t == R_SIZE64 else 4)
    if tgt == T_UNDEF or t in (R_COPY, R_IRELATIVE, R_DTPMOD64, R_TPOFF64, R_TLSDESC):
        return None
    if tgt >= 0 and (entries[tgt][2] or b.flags[r] & F_IFUNC):
        return None
    s = b.value[r]                       # 0 for an undefined weak symbol
    if t == R_DTPOFF64:
        return s + a, 8
    if t == R_GLOB_DAT or t == R_JUMP_SLOT:
        return s, 8
    if t == R_64:
        return s + a, 8
    if t == R_PC64:
        return s + a - b.addr[r], 8
    if t == R_PC32:
        return s + a - b.addr[r], 4
    if t == R_32 or t == R_32S:
        return s + a, 4
    return None


def store(out, at, value, width, path):
    if width == 8:
        _Q.pack_into(out, at, value & 0xFFFFFFFFFFFFFFFF)
    else:
        if not -(1 << 31) <= value < (1 << 32):
            raise ElfError(path, f"relocation at offset {at:#x} overflows 32 bits")
        _I.pack_into(out, at, value & 0xFFFFFFFF)


def load(out, at, width):
    return (_Q if width == 8 else _I).unpack_from(out, at)[0]


def shareable_candidates(elf, lay):
    """Span page indices that hold no run-time writes by design: read-only
    segments and RELRO."""
    pages = set()
    for s in elf.loads:
        if not s.flags & PF_W and s.filesz:
            lo = ((s.vaddr & ~4095) - lay.lo) >> 12
            hi = (((s.vaddr + s.filesz + 4095) & ~4095) - lay.lo) >> 12
            pages.update(range(lo, hi))
    relro = elf.segment(PT_GNU_RELRO)
    if relro is not None:
        lo = ((relro.vaddr & ~4095) - lay.lo) >> 12
        hi = (((relro.vaddr + relro.memsz) & ~4095) - lay.lo) >> 12
        pages.update(range(lo, hi))
    return pages


def prerelocate(elf, base, lay, scope, out, info, stubs=None):
    """Relocate image bytes `out` (starting at address base+lay.lo) in place;
    fill info.stubs, info.shared_ranges and info.nrelocs.  The engine does
    everything that does not bind into glibc; Python only sees the
    relocations left per process and the ones that become stubs."""
    from _native import apply as napply
    from _native import reloc
    from loader.imports import import_name
    from loader.stubs import stub_index
    entries = scope_entries(scope)
    b = bind_entries(scope, 0)
    origin = base + lay.lo
    mask, glibc_bound = napply.split_by_target(b.target, bytes(e[2] for e in entries))
    deferred = reloc.apply(out, origin, b, mask)
    dirty = set()
    for r in deferred:
        at = b.addr[r] - origin
        dirty.add(at >> 12)
        dirty.add((at + 15) >> 12)
    symtypes = {}
    for r in glibc_bound:
        at = b.addr[r] - origin
        if not 0 <= at <= lay.span - 8:
            raise ElfError(elf.path, f"relocation at {b.addr[r] - base:#x} outside the object")
        k = stub_index(stubs, elf, b, r, symtypes, entries)
        if k is not None:
            store(out, at, stubs.stub_addr(k), 8, elf.path)
            info.stubs[import_name(elf, b.symidx[r])] = k
        else:
            dirty.add(at >> 12)
            dirty.add((at + 7) >> 12)
    info.nrelocs = b.count + len(b.relr)
    from loader.image import page_ranges
    info.shared_ranges = page_ranges(shareable_candidates(elf, lay) - dirty)
    return b
