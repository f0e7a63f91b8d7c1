"""`ldpool ldd`: list what a program or library loads, in the format of
`ld.so --list` / ldd (resolution as an explicit `ld.so FILE` does it:
LD_TRACE_LOADED_OBJECTS semantics, missing libraries listed as
"NAME => not found").  Addresses are where a running broker placed the
library (its pool image's start), else 0.
Exit status: 0, or 1 when a file could not be listed or a library is missing.
"""
import json
import os
import sys

from loader import searchpath as sp
from loader.errors import LdpoolError
from loader.resolve import VDSO_NAME, SearchContext, resolve_program


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="machine-readable output (a JSON list, one entry per FILE)")
    p.add_argument("--bindings", action="store_true", help="instead of the listing, print the symbol bindings the non-glibc objects need at start, as LD_BIND_NOW=1 LD_DEBUG=bindings does")
    p.add_argument("files", nargs="+", metavar="FILE", help="program or shared library")


def broker_placements(timeout=2.0):
    """{real path: map start} of the images a running broker holds this
    epoch ($LDPOOL_SOCKET or the default socket); {} when none answers.
    Never starts a broker: ldd only reports."""
    from loader import client
    try:
        conn = client.connect(start_embedded=False, name="ldd", timeout=timeout)
    except (LdpoolError, OSError):
        return {}
    try:
        images = conn.stats().get("images", [])
    except (LdpoolError, OSError, ValueError):
        return {}
    finally:
        conn.close()
    out = {}
    for im in images:
        try:
            out[os.path.realpath(im["path"])] = int(im["map_start"], 16)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _addr(placements, obj):
    if not placements or obj is None or obj.is_glibc:
        return 0
    return placements.get(obj.realpath, 0)


def format_listing(res, placements=None):
    """The lines `ld.so --list` prints for a Resolution."""
    if not res.main.elf.needed:
        return ["\tstatically linked"]
    lines = []
    entries = [(n, o) for n, o in res.listing]
    entries.insert(res.vdso_position, (VDSO_NAME, "vdso"))
    for name, obj in entries:
        if obj == "vdso":
            lines.append(f"\t{VDSO_NAME} (0x{0:016x})")
        elif obj is None:
            lines.append(f"\t{name} => not found")
        elif name == obj.path:
            lines.append(f"\t{name} (0x{_addr(placements, obj):016x})")
        else:
            lines.append(f"\t{name} => {obj.path} (0x{_addr(placements, obj):016x})")
    return lines


def as_json(path, res, placements=None):
    return {
        "file": path,
        "interp": res.interp,
        "statically_linked": not res.main.elf.needed,
        "objects": [
            {"name": n, "path": o.path if o else None, "found": o is not None,
             "realpath": o.realpath if o else None, "soname": o.soname if o else None,
             "kind": o.kind if o else None, "glibc": o.is_glibc if o else None,
             "index": o.index if o else None, "address": _addr(placements, o)}
            for n, o in res.listing],
        "missing": [{"name": n, "requested_by": r.path} for n, r in res.missing],
        "warnings": res.warnings + [f"{path}: {m}" for _, m in res.version_problems],
        "version_errors": res.version_errors,
    }


def run(args):
    files = sp.FileCache()
    env = os.environ
    placements = broker_placements()
    status = 0
    out = []
    several = len(args.files) > 1
    bindings = None
    if args.bindings:
        try:
            from loader.bindings import print_bindings as bindings
        except ImportError:
            print("ldpool: ldd --bindings: loader.bindings is not available in this build", file=sys.stderr)
            return 1
    for path in args.files:
        try:
            ctx = SearchContext(env, files=files)
            res = resolve_program(path, env, explicit_loader=True, context=ctx)
        except LdpoolError as e:
            msg = str(e)
            if not msg.startswith(path + ":"):
                msg = f"{path}: {msg}"
            print(f"ldpool: {msg}", file=sys.stderr)
            status = 1
            if args.json:
                out.append({"file": path, "error": msg})
            continue
        for w in res.warnings:
            print(w, file=sys.stderr)
        for _, msg in res.version_problems:
            print(f"{path}: {msg}", file=sys.stderr)
        if res.missing or res.version_errors:
            status = 1
        if args.json:
            out.append(as_json(path, res, placements))
            continue
        if several:
            print(f"{path}:")
        if bindings is not None:
            bindings(res, file=sys.stdout)
        else:
            print("\n".join(format_listing(res, placements)))
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
    return status
