"""Lookup scopes: which objects a symbol reference searches, in which order.

`Scope(entries, global_count=None, local_scopes=None, main_is_exec=None)`
    entries: list of `(elf: ElfFile, l_addr: int, is_glibc: bool)` in global
    lookup order (main program first, then load order, breadth-first); an
    object's index in the scope is its position in this list.
    global_count: how many leading entries form the global scope (default:
    all), or the list of the global scope's indices in lookup order (for a
    dlopen after RTLD_LOCAL ones: those are left out).  Entries not in it
    are objects dlopen'ed RTLD_LOCAL.
    local_scopes: {index: [indices]}: the local search list of an object
    loaded by dlopen(RTLD_LOCAL): the dlopen root's search list (the root,
    then its dependency closure breadth-first), the same list for the root
    and for every object that dlopen loaded with it.  Such an object
    searches the global scope, then this list, as glibc's l_scope does
    (checked with LD_DEBUG=scopes).  Entries past global_count without one
    search the global scope, then themselves.  An object with DT_SYMBOLIC
    searches itself first.
    deepbind: indices of objects a dlopen(RTLD_DEEPBIND) loaded: they
    search their local list before the global scope.
    main_is_exec: whether entries[0] is the program (glibc skips it for
    COPY lookups); default: guessed from the ELF file (ET_EXEC, or PT_INTERP
    with DF_1_PIE or without a soname).

`Scope.lookup(name, version=None, requester_index=0, newest=False, search_list=None)`
    -> `(def_index, sym_index, runtime_value)` or None.  The slow-path
    convenience (tests, dlsym); relocations use `_native.reloc.bind`.
    By default an unversioned lookup binds as a relocation does (to the
    oldest version); `newest=True` is dlsym's rule (the default version).
    `search_list` (indices) searches only that list, e.g. the search list
    of a dlopen handle; RTLD_DEFAULT is the requester's scope.

`Scope.from_resolution(resolution, l_addrs=None)` builds the scope of a
`loader.resolve.Resolution` (objects in load order; l_addrs default 0;
objects added by resolve_dlopen get RTLD_LOCAL scopes).

A Scope holds C pointers into its ElfFiles' mappings and pins them: an
ElfFile's close() raises BufferError while a Scope uses it.
"""
from loader.elf import DF_1_PIE, DT, ET_EXEC
from _native.symbols import SymScope


def _looks_like_program(elf):
    if elf.e_type == ET_EXEC:
        return True
    return elf.interp is not None and (bool(elf.flags_1 & DF_1_PIE) or elf.soname is None)


def _search_list(objs, root):
    """glibc's l_searchlist of `root`: itself, then DT_NEEDED breadth-first."""
    index = {id(o): i for i, o in enumerate(objs)}
    out, seen = [root], {root}
    k = 0
    while k < len(out):
        for d in getattr(objs[out[k]], "deps", ()) or ():
            j = index.get(id(d))
            if j is not None and j not in seen:
                seen.add(j)
                out.append(j)
        k += 1
    return out


class Scope:
    def __init__(self, entries, global_count=None, local_scopes=None, main_is_exec=None, deepbind=()):
        self.entries = [(e, int(a), bool(g)) for e, a, g in entries]
        n = len(self.entries)
        if global_count is None or isinstance(global_count, int):
            glob = list(range(n if global_count is None else global_count))
        else:
            glob = list(global_count)
        self.global_count = len(glob)
        self.local_scopes = dict(local_scopes or {})
        in_global = set(glob)
        if main_is_exec is None:
            main_is_exec = bool(n) and _looks_like_program(self.entries[0][0])
        self.main_is_exec = main_is_exec
        scopes = []
        for i in range(n):
            local = self.local_scopes.get(i)
            if local is None and i not in in_global:
                local = [i]
            # DT_SYMBOLIC: the object itself first (not for the program: glibc)
            symbolic = DT["SYMBOLIC"] in self.entries[i][0].dyn and not (i == 0 and main_is_exec)
            own = [[i]] if symbolic else []
            if i in deepbind and local:
                # dlopen(RTLD_DEEPBIND): the dlopen's own search list first
                # (glibc's _dl_new_object), then the global scope
                scopes.append(own + [list(local), glob])
            else:
                scopes.append(own + [glob] + ([list(local)] if local else []))
        self.native = SymScope([(e, a) for e, a, _ in self.entries], scopes, main_is_exec)

    @classmethod
    def from_resolution(cls, resolution, l_addrs=None):
        """Objects loaded at start form the global scope; each group of
        objects a dlopen brought in (kind "dlopen" root, then the new
        objects after it) gets the root's search list as its local scope
        (RTLD_LOCAL)."""
        objs = resolution.objects
        if l_addrs is None:
            l_addrs = [0] * len(objs)
        roots = [i for i, o in enumerate(objs) if getattr(o, "kind", None) == "dlopen"]
        local = {}
        for r, end in zip(roots, roots[1:] + [len(objs)]):
            lst = _search_list(objs, r)
            for i in range(r, end):
                local[i] = lst
        return cls([(o.elf, a, o.is_glibc) for o, a in zip(objs, l_addrs)],
                   global_count=roots[0] if roots else None, local_scopes=local)

    def __len__(self):
        return len(self.entries)

    def elf(self, i):
        return self.entries[i][0]

    def l_addr(self, i):
        return self.entries[i][1]

    def is_glibc(self, i):
        return self.entries[i][2]

    def lookup(self, name, version=None, requester_index=0, newest=False, search_list=None):
        found = self.native.py_lookup(name, version, requester_index, 0, newest, search_list)
        if found is None:
            return None
        d, s = found
        return d, s, self.native.symbol_value(d, s)
