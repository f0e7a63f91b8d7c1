"""ld.so's check that every symbol version an object needs (DT_VERNEED) is
defined by the object providing it (elf/dl-version.c).  A missing version
stops a program at start-up; ldd only reports it.  A provider without
version definitions, or a missing weak version, only earns a warning."""
from loader.elf import VER_FLG_WEAK
from loader.errors import ElfError


def _filename(obj, progname):
    # DSO_FILENAME: the main program (l_name "") is shown by its program name
    return obj.lname or progname


def _find_needed(name, chain):
    """find_needed(): the first object in namespace order that has `name`
    as its path or as a name it was requested by."""
    for obj in chain:
        if name == obj.lname or name in obj.names:
            return obj
    return None


def check_versions(chain, progname):
    """[(fatal, message)] for `chain` (the objects in ld.so's namespace
    order), messages as ld.so prints them after "PROGRAM: "."""
    problems = []
    for obj in chain:
        if obj.elf is None:
            continue
        try:
            needs = [v for v in obj.elf.versions.values() if v.file is not None]
        except ElfError as e:
            problems.append((True, f"{_filename(obj, progname)}: {e.problem}"))
            continue
        required_by = _filename(obj, progname)
        for v in needs:
            needed = _find_needed(v.file, chain)
            if needed is None or needed.elf is None:
                continue  # not found: ldd already says so
            try:
                defs = [d for d in needed.elf.versions.values() if d.file is None]
            except ElfError as e:
                problems.append((True, f"{_filename(needed, progname)}: {e.problem}"))
                continue
            where = _filename(needed, progname)
            if not defs:
                problems.append((False, f"{where}: no version information available (required by {required_by})"))
                continue
            if any(d.hash == v.hash and d.name == v.name for d in defs):
                continue
            if v.flags & VER_FLG_WEAK:
                problems.append((False, f"{where}: weak version `{v.name}' not found (required by {required_by})"))
            else:
                problems.append((True, f"{where}: version `{v.name}' not found (required by {required_by})"))
    return problems
