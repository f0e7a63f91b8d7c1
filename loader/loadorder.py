"""The order ld.so loads objects in and what each name maps to: the state
machine behind loader.resolve (rtld.c dl_main, dl-deps.c
_dl_map_object_deps, dl-load.c _dl_map_object)."""
import os

from loader import hwcaps as _hwcaps
from loader import searchpath as sp
from loader.elf import DT, DF_1_PIE, ET_DYN, PT_DYNAMIC, ElfFile
from loader.errors import ElfError, ResolveError
from loader.resolve import (DF_1_NODEFLIB, DF_1_NOOPEN, RTLD_PATH, LoadedObject, Missing, Resolution,
                            is_glibc_soname)
from loader.versioncheck import check_versions

DT_NEEDED, DT_AUXILIARY, DT_FILTER = DT["NEEDED"], 0x7FFFFFFD, 0x7FFFFFFF
PRELOAD_FILE = "/etc/ld.so.preload"
SECURE_PATH_LIMIT = 255


class Loader:
    """One process image under construction."""

    def __init__(self, ctx, trace):
        self.ctx = ctx
        self.trace = trace
        self.main = None
        self.rtld = None
        self.chain = []          # namespace list (matching order); faked entries excluded
        self.searchlist = []     # main's search list: LoadedObject, or Missing in trace mode
        self.by_name = {}        # requested name or l_name -> first object in chain order
        self.by_soname = {}
        self.by_file = {}        # (dev, ino) -> object
        self.warnings = []
        self.resolution = None
        self.llp = None          # LD_LIBRARY_PATH dirs, $ORIGIN being the main program's

    # ------------------------------------------------------------ objects
    def _register(self, obj):
        obj.seq = len(self.chain)
        self.chain.append(obj)
        self._index(obj)

    def _index(self, obj):
        for n in obj.names | ({obj.lname} if obj.lname else set()):
            cur = self.by_name.get(n)
            if cur is None or cur.seq > obj.seq:
                self.by_name[n] = obj
        if obj.soname:
            cur = self.by_soname.get(obj.soname)
            if cur is None or cur.seq > obj.seq:
                self.by_soname[obj.soname] = obj
        if obj.file_id is not None:
            self.by_file.setdefault(obj.file_id, obj)

    def find_loaded(self, name):
        a, b = self.by_name.get(name), self.by_soname.get(name)
        hit = a if b is None or (a is not None and a.seq <= b.seq) else b
        if hit is not None and hit is b:
            self._add_name(hit, name)
        return hit

    def _add_name(self, obj, name):
        if name not in obj.names:
            obj.names.add(name)
            cur = self.by_name.get(name)
            if cur is None or cur.seq > obj.seq:
                self.by_name[name] = obj

    # ------------------------------------------------------------ search
    def _rpath_dirs(self, obj):
        if obj._rpath is None:
            text = obj.elf.rpath if obj.elf is not None else None
            if obj.kind == "main" and obj.elf.runpath is not None:
                text = None  # _dl_init_paths: a main program's RUNPATH hides its RPATH
            obj._rpath = self.ctx.dirs(obj, text) if text else []
        return obj._rpath

    def _runpath_dirs(self, obj):
        if obj._runpath is None:
            text = obj.elf.runpath if obj.elf is not None else None
            obj._runpath = self.ctx.dirs(obj, text) if text else []
        return obj._runpath

    def _llp(self):
        if self.llp is None:
            text = self.ctx.llp_text
            self.llp = self.ctx.dirs(self.main, text, ":;") if text else []
        return self.llp

    def _search_lists(self, loader):
        """The directory lists ld.so tries before ld.so.cache, in order
        (dl-load.c _dl_map_object), each computed only when reached."""
        main = self.main
        if loader is None or loader.elf.runpath is None:
            did_main = False
            obj = loader
            while obj is not None:
                yield self._rpath_dirs(obj)
                did_main |= obj is main
                obj = obj.rpath_loader
            if not did_main and main is not None:
                yield self._rpath_dirs(main)
        yield self._llp()
        if loader is not None:
            yield self._runpath_dirs(loader)

    def _search(self, loader, name, secure_preload):
        ctx, main = self.ctx, self.main
        other = False
        for dirs in self._search_lists(loader):
            if dirs:
                found, o = ctx.search(dirs, name, secure_preload)
                if found:
                    return found, o
                other |= o
        ref = loader or main
        nodeflib = ref is not None and ref.elf is not None and ref.elf.flags_1 & DF_1_NODEFLIB
        if not secure_preload:
            cached = ctx.cache.lookup(name)
            if cached and not (nodeflib and cached.startswith(_hwcaps.SYSTEM_DIRS)):
                v, x = ctx.files.verify(cached)
                if v == sp.OK:
                    return cached, x
                if v == sp.FATAL:
                    raise ResolveError(f"{cached}: {x}")
                other |= x == "wrong ELF class"
        if not nodeflib:
            found, o = ctx.search(_hwcaps.SYSTEM_DIRS, name, secure_preload)
            if found:
                return found, o
            other |= o
        return None, other

    def map_object(self, loader, name, kind="needed", trace=False):
        """_dl_map_object(): the object for `name`, loading it if new; None
        (trace mode) when not found; ResolveError otherwise."""
        hit = self.find_loaded(name)
        if hit is not None:
            return hit
        secure_preload = kind == "preload" and self.ctx.secure
        if "/" not in name:
            path, found = self._search(loader, name, secure_preload)
            elf = found if path else None
            other = not path and found
        else:
            # a path: its DSTs are expanded (again, for DT_NEEDED) with the requester's values
            path = self.ctx.expand(loader, name) if loader is not None and sp.dst_count(name) else name
            v, x = self.ctx.files.verify(self.ctx.abs(path)) if path else (sp.SKIP, "empty")
            if v == sp.FATAL:
                raise ResolveError(f"{path}: {x}")
            elf = x if v == sp.OK else None
            other = v == sp.SKIP and x == "wrong ELF class"
        if elf is None:
            if trace:
                return None
            if other:
                raise ResolveError(f"{name}: wrong ELF class: ELFCLASS32")
            raise ResolveError(f"{name}: cannot open shared object file: No such file or directory")
        fid = (elf.st_dev, elf.st_ino)
        same = self.by_file.get(fid)
        if same is not None:
            self._add_name(same, name)
            return same
        problem = None
        if elf.e_type != ET_DYN:
            problem = "cannot dynamically load executable"
        elif elf.segment(PT_DYNAMIC) is None:
            problem = "object file has no dynamic section"
        elif elf.flags_1 & DF_1_PIE:
            problem = "cannot dynamically load position-independent executable"
        elif kind == "dlopen" and elf.flags_1 & DF_1_NOOPEN:
            problem = "shared object cannot be dlopen()ed"
        if problem:
            raise ResolveError(f"{name}: {problem}")
        obj = LoadedObject(name=name, path=path, elf=elf, soname=elf.soname,
                           is_glibc=is_glibc_soname(elf.soname), kind=kind,
                           origin=sp.origin_of(path, self.ctx.cwd), names={name}, lname=path,
                           rpath_loader=loader if kind != "dlopen" else None, file_id=fid,
                           loader=loader if kind == "needed" else None)
        self._register(obj)
        return obj

    # ------------------------------------------------------------ program
    def load_program(self, path, env, preload, explicit):
        ctx = self.ctx
        full = ctx.abs(path)
        try:
            elf = ElfFile(full)
        except ElfError as e:
            raise ElfError(path, e.problem) from None
        if elf.segment(PT_DYNAMIC) is None:
            raise ElfError(path, "not a dynamic executable")
        real = os.path.realpath(full)
        origin = sp.origin_of(path, ctx.cwd) if explicit else os.path.dirname(real)
        main = LoadedObject(name=path, path=path, elf=elf, soname=elf.soname,
                            is_glibc=is_glibc_soname(elf.soname), kind="main", origin=origin,
                            names={""}, lname="")  # rtld.c blanks l_name even for `ld.so FILE`
        self.main = main
        self._register(main)
        interp = elf.interp or RTLD_PATH
        self._add_rtld(interp, RTLD_PATH if explicit or not os.path.exists(ctx.abs(interp)) else interp)
        self.searchlist = [main]
        reserved = {id(main)}
        for name in self._preload_names(env, preload):
            before = len(self.chain)
            try:
                obj = self.map_object(main, name, kind="preload")
            except ResolveError as e:
                # ld.so shows the bare error string here, without strerror
                msg = str(e).split(": ", 1)[-1]
                for tail in (": No such file or directory", ": Is a directory"):
                    msg = msg[:-len(tail)] if msg.endswith(tail) else msg
                self.warnings.append(f"ERROR: ld.so: object '{name}' from LD_PRELOAD cannot be preloaded ({msg}): ignored.")
                continue
            if len(self.chain) != before and id(obj) not in reserved:
                reserved.add(id(obj))
                self.searchlist.append(obj)
        self._deps_bfs(0, reserved, self.trace)
        return self._finish(elf.interp or RTLD_PATH)

    def _add_rtld(self, interp, path):
        """ld.so is in every process before anything is loaded; it matches
        its PT_INTERP name, its path and its SONAME, never its file."""
        relf = self.ctx.files.elf(os.path.realpath(self.ctx.abs(path)))
        self.rtld = LoadedObject(name=interp, path=path, elf=relf, soname=relf.soname, is_glibc=True,
                                 kind="interp", origin=None, names={interp}, lname=path)
        self._register(self.rtld)

    def _preload_names(self, env, preload):
        secure = self.ctx.secure
        names = []
        if preload is not None:
            names = list(preload)
        elif env.get("LD_PRELOAD"):
            pieces = env["LD_PRELOAD"].replace(":", " ").split(" ")
            names = [p for p in pieces if p and len(p) < SECURE_PATH_LIMIT]
        # dso_name_valid_for_suid: no directories in a secure program's LD_PRELOAD
        names = [n for n in names if not (secure and "/" in n)]
        if os.access(PRELOAD_FILE, os.R_OK):
            try:
                with open(PRELOAD_FILE, "rb") as f:
                    lines = f.read().decode("utf-8", "surrogateescape").splitlines()
            except OSError:
                lines = []
            for line in lines:
                line = line.split("#", 1)[0]
                names += [p for p in line.replace(":", " ").replace("\t", " ").split(" ") if p]
        return [n for n in names if n]

    def _deps_bfs(self, start, reserved, trace):
        """_dl_map_object_deps() from searchlist[start]: appends every new
        object (and, in trace mode, every missing name) breadth first.
        DT_FILTER/DT_AUXILIARY objects go just before their filter instead
        (a missing auxiliary object is ignored)."""
        i = start
        sl = self.searchlist
        done = set()
        while i < len(sl):
            obj = sl[i]
            if id(obj) in done or not isinstance(obj, LoadedObject) or obj.elf is None:
                i += 1
                continue
            done.add(id(obj))
            fill = not obj.deps and not obj.filtees
            pos, first = i, None
            for tag, val in obj.elf.dynamic:
                if tag == DT_NEEDED:
                    name = self._dep_name(obj, obj.elf.dynstr(val), fatal=False)
                    if name is None:
                        continue
                    dep = self.map_object(obj, name, trace=trace)
                    if dep is None:
                        sl.append(Missing(name, obj))
                    elif id(dep) not in reserved:
                        reserved.add(id(dep))
                        sl.append(dep)
                    if fill:
                        obj.deps.append(dep)
                elif tag in (DT_AUXILIARY, DT_FILTER):
                    name = self._dep_name(obj, obj.elf.dynstr(val), fatal=tag == DT_AUXILIARY)
                    if name is None:
                        continue
                    try:
                        aux = self.map_object(obj, name, trace=trace)
                    except ResolveError:
                        if tag == DT_AUXILIARY:
                            continue
                        raise
                    if fill:
                        obj.filtees.append(aux)
                    if aux is None:
                        aux = Missing(name, obj)
                    elif id(aux) in reserved:
                        j = next(k for k, o in enumerate(sl) if o is aux)
                        if j < pos:
                            continue  # already found earlier: stays there
                        del sl[j]
                        done.discard(id(aux))
                    reserved.add(id(aux))
                    sl.insert(pos, aux)
                    first = pos if first is None else first
                    pos += 1
            i = first if first is not None else i + 1

    def _dep_name(self, obj, raw, fatal):
        """expand_dst(): the name with DSTs replaced, None to skip it."""
        if not sp.dst_count(raw):
            return raw
        if self.ctx.secure:
            raise ResolveError(f"{raw}: DST not allowed in SUID/SGID programs")
        name = self.ctx.expand(obj, raw)
        if not name:
            if fatal:
                raise ResolveError(f"{raw}: empty dynamic string token substitution")
            return None
        return name

    def _finish(self, interp):
        objects = [o for o in self.searchlist if isinstance(o, LoadedObject)]
        for i, o in enumerate(objects):
            o.index = i
        missing = [m for m in self.searchlist if not isinstance(m, LoadedObject)]
        shown = self.searchlist[1:] if self.main is not None else list(self.searchlist)
        if self.rtld is not None and self.rtld in objects:
            # rtld.c takes ld.so out of the namespace list and puts it back
            # after its predecessor in the search list, which has no entries
            # for libraries not found (ldd's "not found" lines stay in place)
            shown.remove(self.rtld)
            prev = objects[objects.index(self.rtld) - 1]
            shown.insert(0 if prev is self.main else shown.index(prev) + 1, self.rtld)
        listing = [(o.name, o) if isinstance(o, LoadedObject) else (o[0], None) for o in shown]
        main = self.main or objects[0]
        chain = ([self.main] if self.main is not None else []) + [o for _, o in listing if o is not None]
        problems = check_versions(chain, main.path)
        if not self.trace:
            fatal = [m for f, m in problems if f]
            if fatal:
                raise ResolveError(fatal[0])
        self.resolution = Resolution(main=main, objects=objects, missing=missing, interp=interp,
                                     listing=listing, warnings=self.warnings, state=self,
                                     version_problems=problems)
        return self.resolution

    # ------------------------------------------------------------ dlopen
    def load_library(self, name):
        self.searchlist = []
        self._add_rtld(RTLD_PATH, RTLD_PATH)
        self.dlopen(name, None)
        return self._finish(RTLD_PATH)

    def dlopen(self, name, requester):
        caller = requester or self.main
        chain_len, sl_len = len(self.chain), len(self.searchlist)
        try:
            root = self.map_object(caller, name, kind="dlopen")
            if len(self.chain) == chain_len:
                return []
            self.searchlist.append(root)
            reserved = {id(o) for o in self.searchlist if isinstance(o, LoadedObject)}
            self._deps_bfs(len(self.searchlist) - 1, reserved, False)
        except ResolveError:
            self._rollback(chain_len, sl_len)
            raise
        new = self.searchlist[sl_len:]
        if self.resolution is not None:
            base = len(self.resolution.objects)
            for i, o in enumerate(new):
                o.index = base + i
            self.resolution.objects.extend(new)
        return new

    def _rollback(self, chain_len, sl_len):
        del self.chain[chain_len:]
        del self.searchlist[sl_len:]
        self.by_name, self.by_soname, self.by_file = {}, {}, {}
        for o in self.chain:
            self._index(o)
