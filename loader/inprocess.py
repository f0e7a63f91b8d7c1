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
Images come from the broker's pool when a broker answers (the library
is acquired as a lease of its own, held by one process-wide connection),
else from a private local pool (loader.localpool)."""
import ctypes
import os
import struct
import threading

from loader import planformat as pf
from loader.errors import LdpoolError, ResolveError

RTLD_DEFAULT = ctypes.c_void_p(0)
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANON, MAP_FIXED_NOREPLACE = 1, 2, 0x10, 0x20, 0x100000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4

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
_state = {"pool": None, "next_index": 0, "mapped": {},   # mapped: path key -> _Mapped
          "stubs": set()}                                 # stub regions mapped (addresses)


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
        self.modid = 0


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


def _fill_slots(p, fd, imp):
    """The source's glibc stub region (loader/stubs.py) and this process's
    slot table behind it, mapped on first use; then the plan's slots get
    their imports' addresses (the table is read-only otherwise)."""
    h = p.hdr
    if not h["stubs_addr"]:
        return
    if h["stubs_addr"] not in _state["stubs"]:
        for addr, size, prot, flags, f, off in (
                (h["stubs_addr"], h["stubs_size"], PROT_READ | PROT_EXEC, MAP_SHARED, fd, h["stubs_pool_off"]),
                (h["slots_addr"], h["slots_size"], PROT_READ, MAP_PRIVATE | MAP_ANON, -1, 0)):
            got = _mmap(addr, size, prot, flags | MAP_FIXED_NOREPLACE, f, off)
            if got != addr:
                if got not in (None, 2**64 - 1) and got != -1:
                    _munmap(got, size)
                raise LdpoolError(f"cannot map the glibc stubs at {addr:#x}: address in use")
        _state["stubs"].add(h["stubs_addr"])
    for k, i, _obj, _flags in p.slots:
        at = h["slots_addr"] + 8 * k
        slot = ctypes.c_uint64.from_address(at)
        if slot.value == imp[i]:
            continue
        if slot.value:
            raise LdpoolError(f"glibc stub slot {k} already holds another function")
        _check(_mprotect(at & ~4095, 4096, PROT_READ | PROT_WRITE), "mprotect")
        slot.value = imp[i]
        _mprotect(at & ~4095, 4096, PROT_READ)


def _map_object(p, o, fd):
    start, end = o["map_start"], o["map_end"]
    got = _mmap(start, end - start, 0, MAP_PRIVATE | MAP_ANON | MAP_FIXED_NOREPLACE, -1, 0)
    if got != start:
        if got not in (None, 2**64 - 1) and got != -1:
            _munmap(got, end - start)
        raise LdpoolError(f"{p.string(o['path'])}: address range {start:#x}-{end:#x} is in use")
    try:
        _map_segments(p, o, fd)
    except BaseException:
        _munmap(start, end - start)
        raise


def _open_file(p, o):
    """The object's file if it is still the one the plan was made from
    (SEG_FILE pages come from it; the pool does not hold them)."""
    path = p.string(o["path"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LdpoolError(f"{path}: cannot open: {e.strerror}") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
            o["file_dev"], o["file_ino"], o["file_size"], o["file_mtime_ns"]):
        os.close(fd)
        raise LdpoolError(f"{path}: library changed on disk since it was pooled")
    return fd


def _map_segments(p, o, fd):
    segs = p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]
    filefd = _open_file(p, o) if any(s[4] == pf.SEG_FILE for s in segs) else -1
    try:
        _map_each(p, o, fd, filefd, segs)
    finally:
        if filefd >= 0:
            os.close(filefd)


def _map_each(p, o, fd, filefd, segs):
    for addr, length, off, prot, kind in segs:
        if kind == pf.SEG_FILE:
            r = _mmap(addr, length, prot, MAP_PRIVATE | MAP_FIXED, filefd, off)
        elif kind == pf.SEG_SHARED:
            r = _mmap(addr, length, prot, MAP_SHARED | MAP_FIXED, fd, off)
        elif kind == pf.SEG_PRIVATE:
            r = _mmap(addr, length, prot | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, off)
        else:
            r = _mmap(addr, length, prot | (PROT_WRITE if prot else 0), MAP_PRIVATE | MAP_ANON | MAP_FIXED, -1, 0)
        if r != addr:
            raise LdpoolError(f"{p.string(o['path'])}: cannot map {addr:#x}: {os.strerror(ctypes.get_errno())}")


def _protect(p, o):
    for addr, length, off, prot, kind in p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]:
        if kind not in (pf.SEG_SHARED, pf.SEG_FILE) and prot & PROT_WRITE == 0:
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
        self._lease = None

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
                if m.modid:
                    napply.unregister_tls(m.modid)
            for m in dropping:
                _munmap(m.rec["map_start"], m.rec["map_end"] - m.rec["map_start"])
                del _state["mapped"][m.path]
            # the broker's references go only when nothing of the lease stays mapped
            if self._lease is not None and len(dropping) == len(self._mapped) and _state.get("conn"):
                _state["conn"].release(self._lease)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<loader.open {self._name!r}{' closed' if self._closed else ''}>"


def _broker():
    """The process-wide broker connection, or None when no broker answers."""
    if "conn" not in _state:
        from loader import client
        from loader.errors import BrokerError
        try:
            _state["conn"] = client.connect(start_embedded=False, name="loader.open")
        except BrokerError:
            _state["conn"] = None
    return _state["conn"]


def _plan(res, source):
    """(plan bytes, pool fd, lease or None) for the library of `res`: from
    the broker (the library acquired as a lease of its own, placements and
    fixups computed there) or from the private local pool."""
    conn = _broker() if source in (None, "broker") else None
    if conn is not None:
        blob = conn.acquire_program(os.path.realpath(res.objects[0].path), env=dict(os.environ))
        return blob, conn.pool_fd, pf.unpack(blob).hdr["lease"]
    if source == "broker":
        raise LdpoolError("no broker answers (loader.open(..., source='broker'))")
    from loader.plan import build_dlopen_plan
    pool = _pool()
    blob = build_dlopen_plan(res, list(res.objects), pool, first_index=0)
    return blob, pool.fd, None


def open(name, source=None):  # noqa: A001  (the API's name)
    """Map `name` (a soname searched as dlopen would, or a path) and its
    dependencies into this process; returns a Library.  source: "broker",
    "local", or None (the broker's pool when a broker answers)."""
    from loader import resolve
    with _lock:
        res = resolve.resolve_library(name, env=dict(os.environ), cwd=os.getcwd())
        blob, fd, lease = _plan(res, source)
        try:
            lib = _load(name, res, blob, fd)
        except BaseException:
            if lease is not None:
                _state["conn"].release(lease)
            raise
        lib._lease = lease
        return lib


def _load(name, res, blob, fd):
    """Map, fix up and initialise the objects of plan `blob` (pool `fd`)."""
    import array
    from _native import apply as napply
    from loader.scope import Scope
    p = pf.unpack(blob)
    for g in p.glibc:
        ctypes.CDLL(p.string(g), mode=os.RTLD_GLOBAL)
    imp = array.array("Q", _import_addresses(p))
    _fill_slots(p, fd, imp)
    # module ids unique in this process, whatever the plan numbered
    first = _state["next_index"]
    _state["next_index"] = first + len(p.objects)
    modids = array.array("Q", [1 + first + i if o["tls_modid"] else 0 for i, o in enumerate(p.objects)])
    fixbytes = memoryview(blob)[p.hdr["off_fix"]:p.hdr["off_fix"] + pf.FIX.size * p.hdr["nfix"]]
    mapped, fresh = [], []
    registered = set()
    try:
        for i, o in enumerate(p.objects):
            key = (p.string(o["path"]), o["map_start"])
            m = _state["mapped"].get(key)
            if m is None:
                _map_object(p, o, fd)
                m = _Mapped(o, key)
                m.modid = modids[i]
                _state["mapped"][key] = m
                fresh.append(m)
            m.refs += 1
            mapped.append(m)
        for m in reversed(fresh):            # dependencies first, as ld.so relocates
            o = m.rec
            napply.apply_fixups(fixbytes[pf.FIX.size * o["fix_first"]:pf.FIX.size * (o["fix_first"] + o["fix_count"])],
                                imp, modids, p.hdr["first_index"])
            if m.modid:
                napply.register_tls(m.modid, o["tls_image"], o["tls_filesz"], o["tls_memsz"], o["tls_align"])
                registered.add(m.modid)
            _protect(p, o)
        bias = {os.path.realpath(p.string(x["path"])): x["l_addr"] for x in p.objects}
        entries = [(ob.elf, bias.get(os.path.realpath(ob.path), 0), ob.is_glibc) for ob in res.objects]
        scope = Scope(entries)
        _register_frames(scope, fresh)
    except BaseException:
        # leave the process as it was: nothing half-mapped stays behind
        for m in mapped:
            m.refs -= 1
        for m in fresh:
            if m.modid in registered:
                napply.unregister_tls(m.modid)
            _munmap(m.rec["map_start"], m.rec["map_end"] - m.rec["map_start"])
            del _state["mapped"][m.path]
        raise
    first_index = p.hdr["first_index"]
    order = [mapped[g - first_index] for g in p.init]
    if p.hdr["main_obj"] != pf.NONE:     # a broker plan: the library is its "program"
        order.append(mapped[p.hdr["main_obj"] - first_index])
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
