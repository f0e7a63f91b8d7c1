"""Names of an object's imports as the launcher resolves them: a symbol
name plus the version the object asks for (from its own VERSYM/VERNEED,
or VERDEF for references to its own versions), None when unversioned."""
from loader.refbind import symtable


def import_name(elf, symidx):
    tab = symtable(elf)
    vname, _hidden = tab.version_of(symidx)
    return tab.names[symidx].decode("utf-8", "surrogateescape"), vname
