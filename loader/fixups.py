"""Mode 2: the per-process fixups of one object.  For every relocation,
the value ld.so would store in THIS process's scope is compared with what
the pool image already holds; a record is emitted only where they differ
or where the value is only known in the process (glibc symbols, TLS,
IFUNC results, COPY).

Every relocation is accounted for: `FixupSet.counts` says how many were
found equal to the image ("same"), went through a stub ("stub": the
image's word is the epoch's stub and the plan fills its slot, once per
plan, in `ctx.slots`), and became which fixup record.
"""
from collections import Counter

from _native import apply as napply
from _native import reloc
from loader import planformat as pf
from loader.elfconst import SHN_ABS, SHN_UNDEF, STT_FUNC, STT_GNU_IFUNC, STT_OBJECT
from loader.elf import VERSYM_HIDDEN
from loader.errors import ElfError, ResolveError
from loader.imports import import_name
from loader.stubs import stub_index
from loader.prerelocate import (F_IFUNC, F_WEAKREF, R_32, R_32S, R_64, R_COPY, R_DTPMOD64,
                                R_DTPOFF64, R_GLOB_DAT, R_IRELATIVE, R_JUMP_SLOT, R_NONE,
                                R_PC32, R_PC64, R_RELATIVE, R_SIZE32, R_TLSDESC,
                                R_TPOFF64, T_UNDEF, T_WEAK_UNDEF, bind_entries, load,
                                static_value)

_SYMFIX = {R_64: pf.FIX_SYM64, R_GLOB_DAT: pf.FIX_SYM64, R_JUMP_SLOT: pf.FIX_SYM64,
           R_32: pf.FIX_SYM32, R_32S: pf.FIX_SYM32S, R_PC32: pf.FIX_SYM_PC32}
_TLS = (R_DTPMOD64, R_DTPOFF64, R_TPOFF64, R_TLSDESC)


class Imports:
    """The plan's import table: (name, version) -> index, flags merged."""

    def __init__(self, strings):
        self.strings = strings
        self.index = {}
        self.rows = []

    def add(self, name, version, flags):
        k = (name, version)
        i = self.index.get(k)
        if i is None:
            i = self.index[k] = len(self.rows)
            self.rows.append([self.strings.add(name), self.strings.add(version), flags])
        else:
            row = self.rows[i]
            weak = row[2] & flags & pf.IMP_WEAK     # strong anywhere: strong
            row[2] = ((row[2] | flags) & ~pf.IMP_WEAK) | weak
        return i


# Names ldpool-exec answers before libc: its override table (the top of
# _native/launcher/fixup.c) and its own dynamic exports (RTLD_DEFAULT
# searches the launcher first).  tests/test_import_values.py checks this
# against the built launcher, so it cannot drift.
LAUNCHER_NAMES = frozenset("""
    __libc_start_main dlopen dlsym dlvsym dlclose dlerror dladdr dladdr1 dlinfo
    dl_iterate_phdr _dl_find_object __tls_get_addr readlink readlinkat realpath
    __readlink_chk __readlinkat_chk __realpath_chk open open64 openat openat64
    __open_2 __open64_2 __openat_2 __openat64_2 fopen fopen64
    backtrace_symbols backtrace_symbols_fd
    execve execv execvp execvpe execl execlp execle posix_spawn posix_spawnp""".split())


def libc_values(imports, libc):
    """Precompute, for each import that dlvsym(RTLD_DEFAULT) is certain to
    find in `libc` (an ElfFile of libc.so.6), its st_value and whether it
    is an IFUNC, so the launcher adds libc's load bias instead of calling
    dlvsym.  Returns libc's build-id (the launcher uses the values only for
    that libc), or b"" when nothing is precomputed.  Left to dlvsym: names
    the launcher answers, TLS, symbols libc does not define, anything but
    a plain function/object/IFUNC, and unversioned references to a name
    whose definition is not libc's default version."""
    bid = libc.build_id
    if not bid or len(bid) > pf.BUILD_ID_MAX:
        return b""
    from loader.scope import Scope       # the lookup engine, glibc's rules
    scope = Scope([(libc, 0, True)], main_is_exec=False)
    vs = libc.versym
    for (name, ver), i in imports.index.items():
        row = imports.rows[i]
        if row[2] & pf.IMP_TLS or name in LAUNCHER_NAMES:
            continue
        found = scope.lookup(name, ver, newest=True)
        if found is None:
            continue
        sym = libc.symbol(found[1])
        stype = sym.info & 0xF
        if stype not in (STT_FUNC, STT_OBJECT, STT_GNU_IFUNC) or sym.shndx in (SHN_UNDEF, SHN_ABS):
            continue
        if vs is not None:
            v = vs[found[1]]
            if v & VERSYM_HIDDEN and ver is None:
                continue                  # dlsym never returns a hidden version
            vd = libc.versions.get(v & ~VERSYM_HIDDEN)
            if ver is not None and (vd is None or vd.name != ver):
                continue                  # dlvsym matches the version exactly
        row[2] |= pf.IMP_LIBC | (pf.IMP_IFUNC if stype == STT_GNU_IFUNC else 0)
        row.append(sym.value)
    return bid


SLOT_BIND_NOW = 1


def add_slot(slots, k, imp, g, bind_now):
    """Record that slot k of the plan's slot table gets import `imp`;
    `g` (global object index) names the first user in messages; one
    BIND_NOW user makes a missing symbol fail at start."""
    row = slots.get(k)
    if row is None:
        slots[k] = [imp, g, SLOT_BIND_NOW if bind_now else 0]
    elif bind_now:
        row[2] |= SLOT_BIND_NOW


class FixupSet:
    def __init__(self):
        self.fixes = []          # (addr, type, sym, addend, aux)
        self.pages = set()       # page addresses fixups write
        self.counts = Counter()
        self.nrelocs = 0

    def add(self, addr, ftype, sym=pf.NONE, addend=0, aux=0, width=8):
        self.fixes.append((addr, ftype, sym, _signed(addend), aux))
        self.pages.update(range(addr & ~4095, addr + max(width, 1), 4096))
        self.counts[pf.FIX_NAMES[ftype]] += 1


def _signed(v):
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v


def undefined_error(elf, name, lname=None):
    return ResolveError(f"symbol lookup error: {lname or elf.path}: undefined symbol: {name}")


def object_fixups(ctx, k):
    """FixupSet for process-scope entry k (a pooled object).  `ctx` has
    entries, placed (per entry), source, imports, global_index, bind_now,
    stubs (the source's StubRegion or None) and slots (k -> row, filled)."""
    entries = ctx.entries
    elf, base, _ = entries[k]
    placed = ctx.placed[k]
    lay = placed.info.layout
    image = ctx.source.image_bytes(placed)
    origin = base + lay.lo
    b = bind_entries(ctx.scope, k)
    fs = FixupSet()
    symtypes = {}
    stubs = getattr(ctx, "stubs", None)
    lazy_ok = not (ctx.bind_now or elf.bind_now)

    def glibc_import(s, flags, weak):
        name, ver = import_name(elf, s)
        return ctx.imports.add(name, ver, flags | (pf.IMP_WEAK if weak else 0))

    def same_or_abs(addr, value, width):
        if load(image, addr - origin, width) == value & (0xFFFFFFFFFFFFFFFF if width == 8 else 0xFFFFFFFF):
            fs.counts["same"] += 1
        elif width == 8:
            fs.add(addr, pf.FIX_ABS64, addend=value)
        else:
            raise ElfError(elf.path, f"a 32-bit relocation at {addr - base:#x} differs from the pool "
                                     "image in this process; not supported")

    def one(r):
        t = b.rtype[r]
        addr = b.addr[r]
        a = b.addend[r]
        tgt = b.target[r]
        s = b.symidx[r]
        weak = bool(b.flags[r] & F_WEAKREF)
        if t == R_NONE or t == R_RELATIVE:
            fs.counts["same"] += 1               # the image has the same load bias
            return
        if t == R_IRELATIVE:
            fs.add(addr, pf.FIX_IRELATIVE, addend=base + a)
            return
        if tgt == T_UNDEF:
            if t == R_JUMP_SLOT and lazy_ok:
                # ld.so would only fail at the first call: the launcher binds
                # a missing function import of a lazy object to a stub that
                # reports it then
                fs.add(addr, pf.FIX_SYM64, glibc_import(s, pf.IMP_FUNC, False))
                return
            # named as ld.so names it: the path as it was found ("./libx.so")
            names = getattr(ctx, "names", None)
            raise undefined_error(elf, elf.symbol(s).name, names[k] if names else None)
        glibc = tgt >= 0 and entries[tgt][2]
        if t == R_COPY:
            # the copy writes the symbol's whole size: every page of it is private
            if glibc:
                fs.add(addr, pf.FIX_COPY, glibc_import(s, 0, False), b.symsize[r], width=b.symsize[r])
            elif tgt >= 0:
                fs.add(addr, pf.FIX_COPY, pf.NONE, b.symsize[r], b.value[r], width=b.symsize[r])
            return
        if t in _TLS:
            if tgt == T_WEAK_UNDEF:
                same_or_abs(addr, 0, 8)
                return
            off = b.value[r] + a
            if glibc:
                if t != R_TPOFF64:
                    raise ElfError(elf.path, f"TLS relocation type {t} against glibc's "
                                             f"{elf.symbol(s).name} is not supported")
                fs.add(addr, pf.FIX_GLIBC_TPOFF, glibc_import(s, pf.IMP_TLS, weak), a)
                return
            g = ctx.global_index[tgt]
            if t == R_DTPMOD64:
                fs.add(addr, pf.FIX_DTPMOD, g)
            elif t == R_DTPOFF64:
                same_or_abs(addr, off, 8)
            elif t == R_TPOFF64:
                fs.add(addr, pf.FIX_TPOFF, g, off)
            else:
                fs.add(addr, pf.FIX_TLSDESC, g, off, width=16)
            return
        if glibc:
            if t not in _SYMFIX:
                sv = static_value(entries, b, r)     # SIZE32/64
                same_or_abs(addr, sv[0], sv[1])
                return
            si = stub_index(stubs, elf, b, r, symtypes, entries)
            if si is not None:
                value = stubs.stub_addr(si)
                if load(image, addr - origin, 8) == value:
                    fs.counts["stub"] += 1
                else:
                    fs.add(addr, pf.FIX_ABS64, addend=value)
                add_slot(ctx.slots, si, glibc_import(s, pf.IMP_FUNC, weak), ctx.global_index[k],
                         not lazy_ok)
                return
            if t == R_PC64:
                raise ElfError(elf.path, "R_X86_64_PC64 against a glibc symbol is not supported")
            func = t == R_JUMP_SLOT or bool(b.flags[r] & F_IFUNC)
            add = 0 if t in (R_GLOB_DAT, R_JUMP_SLOT) else a
            fs.add(addr, _SYMFIX[t], glibc_import(s, pf.IMP_FUNC if func else 0, weak), add,
                   width=8 if _SYMFIX[t] == pf.FIX_SYM64 else 4)
            return
        if tgt >= 0 and b.flags[r] & F_IFUNC and t in (R_64, R_GLOB_DAT, R_JUMP_SLOT):
            # a pooled IFUNC: the resolver runs in the process
            fs.add(addr, pf.FIX_IRELATIVE, addend=b.value[r])
            return
        sv = static_value(entries, b, r)
        if sv is None:
            raise ElfError(elf.path, f"relocation type {t} at {addr - base:#x} cannot be planned")
        same_or_abs(addr, sv[0], sv[1])

    # the engine compares everything that does not bind into glibc with the
    # image; Python sees only what differs or is per-process by nature
    mask, glibc_bound = napply.split_by_target(b.target, ctx.glibc_flags)
    differ, values, deferred = reloc.compare(image, origin, b, mask)
    for j, r in enumerate(differ):
        t = b.rtype[r]
        if t in (R_PC32, R_32, R_32S, R_SIZE32):
            raise ElfError(elf.path, f"a 32-bit relocation at {b.addr[r] - base:#x} differs from the "
                                     "pool image in this process; not supported")
        fs.add(b.addr[r], pf.FIX_ABS64, addend=values[j])
    for r in deferred:
        one(r)
    for r in glibc_bound:
        one(r)
    fs.counts["same"] += b.count - len(differ) - len(deferred) - len(glibc_bound)
    fs.counts["same"] += len(b.relr)
    fs.nrelocs = b.count + len(b.relr)
    return fs
