"""loader.open(name): a library and its dependencies mapped into this
process from pool images, without ld.so, used like ctypes.CDLL.

The library is planned as a dlopen in a namespace of its own (its own
breadth-first dependency list is its scope); glibc's family stays the
running process's: the plan's glibc imports are bound with dlvsym on
RTLD_DEFAULT, honouring versions, and __tls_get_addr is ldpool's
(_native.apply), so dynamic TLS of mapped objects works in every thread.
Objects are mapped at their fixed placements (MAP_FIXED_NOREPLACE),
fixed up dependencies first, RELRO made read-only, unwind tables
registered with the mapped libgcc_s (C++ exceptions), then initialised in
glibc's order.  An object shared by two open libraries is mapped once.
Images come from a private local pool (loader.localpool)."""
import ctypes
import os
import struct
import threading

from loader import planformat as pf
from loader.errors import LdpoolError, ResolveError

RTLD_DEFAULT = ctypes.c_void_p(0)
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANON, MAP_FIXED_NOREPLACE = 1, 2, 0x10, 0x20, 0x100000
PROT_READ, PROT_WRITE = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mprotect = _libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_dlsym = _libc.dlsym
_dlsym.restype = ctypes.c_void_p
_dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_dlvsym = _libc.dlvsym
_dlvsym.restype = ctypes.c_void_p
_dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
_INITFN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_FINIFN = ctypes.CFUNCTYPE(None)
_REGFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_DEREGFN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)

_lock = threading.RLock()
_state = {"pool": None, "next_index": 0, "mapped": {}}   # mapped: path key -> _Mapped


class _FuncPtr(ctypes._CFuncPtr):
    _flags_ = ctypes._FUNCFLAG_CDECL
    _restype_ = ctypes.c_int


def _check(ret, what):
    if ret in (None, -1) or (isinstance(ret, int) and ret < 0):
        e = ctypes.get_errno()
        raise LdpoolError(f"{what}: {os.strerror(e)}")
    return ret


def _pool():
    if _state["pool"] is None:
        from loader.localpool import LocalPool
        _state["pool"] = LocalPool()
    return _state["pool"]


class _Mapped:
    """One object mapped in this process (shared by the handles using it)."""

    def __init__(self, rec, path):
        self.rec, self.path, self.refs = rec, path, 0
        self.frames = []            # (deregister function, eh_frame address, buffer)


def _import_addresses(p):
    from _native import apply as napply
    out = []
    for name_off, ver_off, flags, _ in p.imports:
        name = p.string(name_off)
        if name == "__tls_get_addr":
            out.append(napply.tls_get_addr_address())
            continue
        ver = p.string(ver_off) if ver_off != pf.NONE else None
        a = (_dlvsym(RTLD_DEFAULT, name.encode(), ver.encode()) if ver
             else _dlsym(RTLD_DEFAULT, name.encode()))
        if not a and not flags & pf.IMP_WEAK:
            raise ResolveError(f"symbol lookup error: undefined symbol: {name}" + (f", version {ver}" if ver else ""))
        out.append(a or 0)
    return out


def _map_object(p, o, fd):
    start, end = o["map_start"], o["map_end"]
    got = _mmap(start, end - start, 0, MAP_PRIVATE | MAP_ANON | MAP_FIXED_NOREPLACE, -1, 0)
    if got != start:
        if got not in (None, 2**64 - 1) and got != -1:
            _munmap(got, end - start)
        raise LdpoolError(f"{p.string(o['path'])}: address range {start:#x}-{end:#x} is in use")
    for addr, length, off, prot, kind in p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]:
        if kind == pf.SEG_SHARED:
            r = _mmap(addr, length, prot, MAP_SHARED | MAP_FIXED, fd, off)
        elif kind == pf.SEG_PRIVATE:
            r = _mmap(addr, length, prot | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, off)
        else:
            r = _mmap(addr, length, prot | (PROT_WRITE if prot else 0), MAP_PRIVATE | MAP_ANON | MAP_FIXED, -1, 0)
        if r != addr:
            raise LdpoolError(f"{p.string(o['path'])}: cannot map {addr:#x}: {os.strerror(ctypes.get_errno())}")


def _protect(p, o):
    for addr, length, off, prot, kind in p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]:
        if kind != pf.SEG_SHARED and prot & PROT_WRITE == 0:
            _mprotect(addr, length, prot)
    if o["relro_end"] > o["relro_start"]:
        _mprotect(o["relro_start"], o["relro_end"] - o["relro_start"], PROT_READ)


def _eh_frame(hdr):
    """.eh_frame address from a PT_GNU_EH_FRAME header (pcrel/abs sdata4/udata8)."""
    version, enc = ctypes.string_at(hdr, 2)
    if version != 1:
        return 0
    field = hdr + 4
    fmt, size = {0x03: ("<I", 4), 0x0B: ("<i", 4), 0x04: ("<Q", 8), 0x0C: ("<q", 8)}.get(enc & 0x0F, (None, 0))
    if fmt is None:
        return 0
    v = struct.unpack(fmt, ctypes.string_at(field, size))[0]
    return (field + v) if enc & 0x70 == 0x10 else v if enc & 0x70 == 0 else 0


class Library:
    """Handle of a library opened by loader.open: attributes are its
    functions (ctypes function pointers, restype c_int by default, as
    ctypes.CDLL gives)."""

    def __init__(self, name, resolution, plan, mapped, scope, order):
        self._name, self._res, self._plan = name, resolution, plan
        self._mapped, self._scope, self._order = mapped, scope, order
        self._closed = False

    def symbol_address(self, name, version=None):
        if self._closed:
            raise LdpoolError(f"{self._name}: library is closed")
        found = self._scope.lookup(name, version, 0, True)
        if found is None:
            return None
        d, _s, value = found
        if self._scope.is_glibc(d):
            return (_dlvsym(RTLD_DEFAULT, name.encode(), version.encode()) if version
                    else _dlsym(RTLD_DEFAULT, name.encode())) or None
        return value

    def __getitem__(self, name):
        addr = self.symbol_address(name)
        if addr is None:
            raise AttributeError(f"{self._name}: undefined symbol: {name}")
        return _FuncPtr(addr)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        f = self[name]
        setattr(self, name, f)
        return f

    def close(self):
        """Run the finalisers of the objects no other handle uses, then unmap them."""
        with _lock:
            if self._closed:
                return
            self._closed = True
            for k in [k for k, v in vars(self).items() if isinstance(v, _FuncPtr)]:
                delattr(self, k)          # cached functions would now point at nothing
            from _native import apply as napply
            dropping = []
            for m in self._mapped:
                m.refs -= 1
                if m.refs == 0:
                    dropping.append(m)
            gone = {id(m) for m in dropping}
            for m in reversed(self._order):
                if id(m) not in gone:
                    continue
                o = m.rec
                for i in reversed(range(o["fini_count"])):
                    fn = ctypes.c_uint64.from_address(o["fini_array"] + 8 * i).value
                    if fn not in (0, 2**64 - 1):
                        _FINIFN(fn)()
                if o["fini"]:
                    _FINIFN(o["fini"])()
            for m in dropping:
                for dereg, eh, _buf in m.frames:
                    dereg(eh)
                if m.rec["tls_modid"]:
                    napply.unregister_tls(m.rec["tls_modid"])
            for m in dropping:
                _munmap(m.rec["map_start"], m.rec["map_end"] - m.rec["map_start"])
                del _state["mapped"][m.path]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<loader.open {self._name!r}{' closed' if self._closed else ''}>"


def open(name):  # noqa: A001  (the API's name)
    """Map `name` (a soname searched as dlopen would, or a path) and its
    dependencies into this process; returns a Library."""
    from _native import apply as napply
    from loader import resolve
    from loader.plan import build_dlopen_plan
    from loader.scope import Scope
    with _lock:
        res = resolve.resolve_library(name, env=dict(os.environ), cwd=os.getcwd())
        pool = _pool()
        first = _state["next_index"]
        blob = build_dlopen_plan(res, list(res.objects), pool, first_index=first)
        p = pf.unpack(blob)
        _state["next_index"] = first + len(p.objects)
        for g in p.glibc:
            ctypes.CDLL(p.string(g), mode=os.RTLD_GLOBAL)
        imports = _import_addresses(p)
        import array
        imp = array.array("Q", imports)
        modids = array.array("Q", [o["tls_modid"] for o in p.objects])
        fixbytes = memoryview(blob)[p.hdr["off_fix"]:p.hdr["off_fix"] + pf.FIX.size * p.hdr["nfix"]]
        mapped, fresh = [], []
        for o in p.objects:
            key = p.string(o["path"])
            m = _state["mapped"].get(key)
            if m is None or m.rec["map_start"] != o["map_start"]:
                _map_object(p, o, pool.fd)
                m = _Mapped(o, key)
                _state["mapped"][key] = m
                fresh.append(m)
            m.refs += 1
            mapped.append(m)
        for m in reversed(fresh):            # dependencies first, as ld.so relocates
            o = m.rec
            napply.apply_fixups(fixbytes[pf.FIX.size * o["fix_first"]:pf.FIX.size * (o["fix_first"] + o["fix_count"])],
                                imp, modids, first)
            if o["tls_modid"]:
                napply.register_tls(o["tls_modid"], o["tls_image"], o["tls_filesz"], o["tls_memsz"], o["tls_align"])
            _protect(p, o)
        entries = [(ob.elf, next((x["l_addr"] for x in p.objects if p.string(x["path"]) == ob.path), 0), ob.is_glibc)
                   for ob in res.objects]
        scope = Scope(entries)
        _register_frames(scope, fresh)
        by_index = {first + i: mapped[i] for i in range(len(mapped))}
        order = [by_index[g] for g in p.init]
        environ = ctypes.c_void_p.in_dll(_libc, "environ").value
        for m in order:
            if m not in fresh:
                continue
            o = m.rec
            if o["init"]:
                _INITFN(o["init"])(0, None, environ)
            for i in range(o["init_count"]):
                fn = ctypes.c_uint64.from_address(o["init_array"] + 8 * i).value
                if fn not in (0, 2**64 - 1):
                    _INITFN(fn)(0, None, environ)
        return Library(name, res, p, mapped, scope, order)


def _register_frames(scope, fresh):
    """Give each new object's .eh_frame to the mapped libgcc_s (if any):
    its unwinder does not know objects ld.so did not load."""
    reg = dereg = None
    for i, (elf, l_addr, is_glibc) in enumerate(scope.entries):
        if not is_glibc and (elf.soname or "").startswith("libgcc_s"):
            r = scope.lookup("__register_frame_info", None, i, True)
            d = scope.lookup("__deregister_frame_info", None, i, True)
            if r and d:
                reg, dereg = _REGFN(r[2]), _DEREGFN(d[2])
            break
    if reg is None:
        return
    for m in fresh:
        if m.rec["eh_frame_hdr"]:
            eh = _eh_frame(m.rec["eh_frame_hdr"])
            if eh:
                buf = ctypes.create_string_buffer(256)      # libgcc's struct object
                reg(eh, buf)
                m.frames.append((dereg, eh, buf))
