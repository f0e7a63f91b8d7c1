"""Definitions that take the place of glibc's own.

Natively, ld.so relocates glibc's family after the program is loaded, so a
reference glibc makes through its GOT (`argp_program_version`,
`error_print_progname`, `optind`, `obstack_alloc_failed_handler`...) binds
to the program's definition when the program (or a library before libc in
the global scope) exports one.  In hosted mode ld.so relocated glibc for the
launcher, before the program existed: glibc still points at its own copy,
so argp programs lose `--version`, error() its program-name hook.

`interpositions(scope)` binds every glibc-family object of the program's
scope with the engine (the very lookup `ldd --bindings` checks against
LD_DEBUG) and returns what lands outside the family: data the launcher
redirects glibc's GOT slots to (fixup INTERPOSE: the same repointing as a
COPY relocation, without the copy), or functions, which cannot be
redirected once glibc has run (a malloc of the program's own would free
glibc's blocks): those programs stay with ld.so."""
from collections import namedtuple

from _native import reloc
from loader.errors import LdpoolError
from loader.imports import import_name
from loader.resolve import is_glibc_soname

R_64, R_COPY, R_GLOB_DAT, R_JUMP_SLOT = 1, 5, 6, 7
SHN_UNDEF = 0
STT_FUNC, STT_GNU_IFUNC = 2, 10

# glibc writes these while it starts (before the program exists here):
# the program's definition must receive glibc's value, as a COPY would
STARTUP_WRITTEN = frozenset("""environ __environ _environ __progname __progname_full
    program_invocation_name program_invocation_short_name __libc_stack_end
    __libc_single_threaded __curbrk _dl_argv __libc_enable_secure""".split())

# what a library left to ld.so (hosted) usually replaces, named in notices
ALLOCATOR_NAMES = ("malloc", "free", "calloc", "realloc", "memalign", "aligned_alloc", "posix_memalign")

Interposed = namedtuple("Interposed", "name version glibc_index definer addr size copy")


class NotPoolable(LdpoolError):
    exit_code = 127


def _glibc_bound_out(scope):
    """(glibc index i, bind result b, row r, name, version, is_function)
    for every GOT word of glibc's family that binds to a definition outside
    it, once per (name, version)."""
    seen = set()
    for i in range(len(scope)):
        if not scope.is_glibc(i):
            continue
        b = reloc.bind(scope, i)
        elf = scope.elf(i)
        for r in range(b.count):
            t = b.rtype[r]
            tgt = b.target[r]
            if t not in (R_64, R_GLOB_DAT, R_JUMP_SLOT) or tgt < 0 or scope.is_glibc(tgt):
                continue
            name, ver = import_name(elf, b.symidx[r])
            if (name, ver) in seen:
                continue
            found = scope.lookup(name, ver, i)
            if found is None or found[0] != tgt:
                continue
            sym = scope.elf(tgt).symbol(found[1])
            if sym.shndx == SHN_UNDEF:
                # a non-PIE program's canonical PLT entry: glibc's slot points
                # at a jump back into glibc; only pointer identity is at stake
                continue
            seen.add((name, ver))
            yield i, b, r, name, ver, t == R_JUMP_SLOT or sym.info & 0xF in (STT_FUNC, STT_GNU_IFUNC)


def hosted_libraries(scope, main=0):
    """Indices of the libraries (not the program `main`) that define a
    function glibc calls (malloc & co.): glibc must be bound to them before
    it runs, so ld.so loads them into the launcher (preloaded) and the plan
    treats them as glibc's family."""
    out = set()
    for _i, b, r, _name, _ver, func in _glibc_bound_out(scope):
        if func and b.target[r] != main:
            out.add(b.target[r])
    return sorted(out)


def interpositions(scope):
    """[Interposed] for the data glibc's family would bind to pooled
    definitions, one per (name, version); NotPoolable for a function."""
    out, copies = {}, {}
    for i, b, r, name, ver, func in _glibc_bound_out(scope):
        tgt = b.target[r]
        if func:
            # a caller outside glibc's own sonames is a library left to ld.so
            # (it replaces malloc: plan._host_allocators), bound before us too
            soname = scope.elf(i).soname
            if is_glibc_soname(soname):
                caller, why = "glibc", "glibc is already bound to its own"
            else:
                caller = soname or scope.elf(i).path
                replaced = _replaced_by(scope, i)
                why = (f"{caller} replaces glibc's {replaced}, so ld.so loads it before the program "
                       "and binds it before the program's definitions exist")
            raise NotPoolable(f"{scope.elf(tgt).path} defines {name}, which {caller} calls: "
                              f"it cannot be pooled ({why})")
        if b.value[r] in copies.setdefault(tgt, _copy_targets(scope, tgt)):
            continue                     # a COPY relocation: its own fixup repoints glibc
        out[(name, ver)] = Interposed(name, ver, i, tgt, b.value[r], max(b.symsize[r], 1),
                                      name in STARTUP_WRITTEN)
    return list(out.values())


def _replaced_by(scope, k):
    """The glibc functions hosted library k replaces (what made it hosted),
    for the notice: "malloc, free..." """
    names = []
    for name in ALLOCATOR_NAMES:
        d = scope.lookup(name, None, k, search_list=[k])
        if d is not None and scope.elf(d[0]).symbol(d[1]).shndx:
            names.append(name)
    return ", ".join(names) if names else "functions glibc calls"


def _copy_targets(scope, k):
    """Runtime addresses object k's COPY relocations write."""
    rela, base = scope.elf(k).rela, scope.l_addr(k)
    return {base + rela[j] for j in range(0, len(rela), 3) if rela[j + 1] & 0xFFFFFFFF == R_COPY}
