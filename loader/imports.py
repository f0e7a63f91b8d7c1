"""Names of an object's imports as the launcher resolves them: a symbol
name plus the version the object asks for (from its own VERSYM/VERNEED,
or VERDEF for references to its own versions), None when unversioned."""
from loader.elf import VERSYM_HIDDEN


def import_name(elf, symidx):
    name = elf.symbol(symidx).name
    vs = elf.versym
    if vs is None:
        return name, None
    ndx = vs[symidx] & ~VERSYM_HIDDEN
    ver = elf.versions.get(ndx) if ndx >= 2 else None
    return name, (ver.name if ver else None)
