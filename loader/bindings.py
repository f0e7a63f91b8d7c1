"""Who binds to whom at start-up, in glibc's LD_DEBUG=bindings words.

`compute_bindings(resolution)` -> list of `Binding(requester, definer,
symbol, version, protected)` (names as glibc prints them: the main program
as it was named on the command line, libraries by the path they were found
at), for every symbol lookup that the program's objects outside glibc's
family make at start with LD_BIND_NOW=1, deduplicated.

`print_bindings(resolution, file)` prints them in exactly the format of
`LD_BIND_NOW=1 LD_DEBUG=bindings` without the `PID:\\t` prefix:
    binding file A [0] to B [0]: normal symbol `x' [VER]
("protected symbol" for a protected reference; " [VER]" only for a
versioned reference).  `resolution` is a loader.resolve.Resolution (or
anything with `.objects` carrying .elf, .path, .name, .is_glibc).
"""
import sys
from collections import namedtuple

from _native import reloc
from loader.elf import VER_FLG_BASE
from loader.scope import Scope

RTLD_MALLOC_SYMBOLS = ("calloc", "free", "malloc", "realloc")
Binding = namedtuple("Binding", "requester definer symbol version protected")


def display_name(obj, index):
    """l_name as glibc prints it: argv[0] for the program, else the path."""
    if index == 0:
        return getattr(obj, "name", None) or obj.path
    return obj.path


def _version_names(elf):
    return {k: v.name for k, v in elf.versions.items()
            if not (v.file is None and v.flags & VER_FLG_BASE)}


def compute_bindings(resolution, scope=None):
    objs = resolution.objects
    if scope is None:
        scope = Scope.from_resolution(resolution)
    names = [display_name(o, i) for i, o in enumerate(objs)]
    out = []
    for i, o in enumerate(objs):
        if o.is_glibc:
            continue
        b = reloc.bind(scope, i)
        keys = set(reloc.lookup_keys(b))
        if not keys:
            continue
        elf = o.elf
        versym = elf.versym
        vnames = _version_names(elf) if versym is not None else {}
        for key in sorted(keys):
            si, t, prot = key >> 32, (key >> 1) & 0x7FFFFFFF, key & 1
            ver = vnames.get(versym[si] & 0x7FFF) if versym is not None else None
            out.append(Binding(names[i], names[t], scope.native.name(i, si), ver, bool(prot)))
    if objs and not objs[0].is_glibc:
        # rtld's own lookups after relocation (elf/dl-minimal.c,
        # __rtld_malloc_init_real): requested by the program, version GLIBC_2.2.5
        for name in RTLD_MALLOC_SYMBOLS:
            found = scope.lookup(name, "GLIBC_2.2.5", 0)
            if found is not None:
                out.append(Binding(names[0], names[found[0]], name, "GLIBC_2.2.5", False))
    return sorted(set(out))


def format_binding(b):
    line = (f"binding file {b.requester} [0] to {b.definer} [0]: "
            f"{'protected' if b.protected else 'normal'} symbol `{b.symbol}'")
    return line + (f" [{b.version}]" if b.version else "")


def print_bindings(resolution, file=None):
    file = sys.stdout if file is None else file
    for b in compute_bindings(resolution):
        print(format_binding(b), file=file)
