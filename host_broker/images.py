"""The image store: every pre-relocated image of the epoch, keyed by content
(loader.image.image_key: SHA-256 of the file plus build-id), with its
placement and pool extent. It is the broker's `ImageSource`
(loader/image.py documents the protocol): `place(obj)` builds an image once,
its canonical scope first, and returns the same PlacedImage for the rest of
the epoch. The broker always reads library files itself (through
loader.elf), never bytes from a client.

By default the pool holds only the pages relocation makes differ from the
library file (ImageInfo.file_ranges are never written: sparse,
they cost no memory) and host clients map the rest from the file itself;
`text_in_pool` keeps whole images, for clients that cannot see host files."""
import bisect
import dataclasses
import hashlib
import mmap
import os

from loader import image as limage
from loader.elf import ElfFile
from loader.errors import BrokerError

ET_EXEC = 2

PAGE = 4096


class ImageRecord:
    __slots__ = ("key", "path", "soname", "placed", "extent_va", "sha256", "deps",
                 "state", "uids", "relro_bytes", "_info_json", "restored", "sparse")

    def __init__(self, key, path, soname, placed, extent_va, sha256, deps, state="live"):
        self.key, self.path, self.soname, self.placed = key, path, soname, placed
        self.extent_va, self.sha256, self.deps, self.state = extent_va, sha256, deps, state
        self.uids = set()          # uids that acquired it this epoch (privacy of stats)
        self.relro_bytes = 0       # pages ld.so would relocate privately in every process
        self._info_json = None
        self.restored = False      # left by a previous broker: may be mapped without a lease
        self.sparse = False        # the pool lacks its file_ranges (host clients map the file)

    def info_json(self):
        if self._info_json is None:
            self._info_json = encode(self.placed.info)
        return self._info_json

    @property
    def map_start(self):
        return self.placed.map_start

    @property
    def map_end(self):
        return self.placed.map_end


def canonical_deps(obj):
    """The object's own breadth-first dependency closure, resolved with an
    empty environment, without itself (the same rule as loader.localpool)."""
    from loader.localpool import canonical_deps as deps
    return deps(obj)


class ImageStore:
    """ImageSource over the shared pool."""

    def __init__(self, pool, placements, refs, on_change=lambda: None, deps_of=canonical_deps,
                 builder=None, make_room=lambda: False, text_in_pool=False):
        self.pool, self.placements, self.refs = pool, placements, refs
        self.text_in_pool = text_in_pool   # the plans' policy too (loader.plan reads it)
        self.make_room = make_room
        self.admit = lambda obj: None   # raises when obj may not enter the pool
        self.touched = set()        # keys placed by the acquisition in progress
        self.on_change, self.deps_of = on_change, deps_of
        self.builder = builder or limage.build_image
        self.images = {}            # key -> ImageRecord
        self.stubs = None           # the epoch's StubRegion (attach_stubs)
        self._starts = []           # sorted (map_start, key) for address lookups
        self._building = {}         # key -> provisional PlacedImage

    # --- ImageSource --------------------------------------------------
    @property
    def pool_size(self):
        return self.pool.size

    @property
    def pool_path(self):
        return "/dev/shm/" + self.pool.name.lstrip("/")

    def image_bytes(self, placed):
        return self.pool.view[placed.pool_off:placed.pool_off + placed.size].toreadonly()

    def place(self, obj, instance=0, host=None):
        elf = obj.elf
        key = limage.image_key(elf, instance)
        if key in self._building:
            return self._building[key]
        # whatever this acquisition uses must survive a make_room() later in it
        self.touched.add(key)
        rec = self.images.get(key)
        if rec is not None:
            if rec.state != "quarantined":
                return rec.placed
            self._set_aside(rec)
        return self._build(obj, elf, key, host).placed

    def _set_aside(self, rec):
        """A quarantined image keeps its space for the epoch (processes may
        map it) under another name, so that its key can be built afresh."""
        n = 1
        while f"{rec.key}#q{n}" in self.images:
            n += 1
        new = f"{rec.key}#q{n}"
        del self.images[rec.key]
        self._starts.remove((rec.map_start, rec.key))
        self.refs.rename(rec.key, new)
        rec.key = new
        self.images[new] = rec
        bisect.insort(self._starts, (rec.map_start, new))

    def attach_stubs(self, saved=None):
        """The epoch's stub region (loader/stubs.py) at the placements'
        reserved address: made for a fresh epoch, re-adopted from the
        journal's `saved` after a restart (same indices: running processes
        and pooled images use them).  Its bytes depend only on its address,
        so damaged ones are simply written again."""
        from loader.stubs import StubRegion
        addr = self.placements.stubs_addr
        if saved is None:
            region = StubRegion(addr, 0, on_change=self.on_change)
            region.pool_off = self.pool.alloc(region.size)
        else:
            region = StubRegion.from_json(saved, on_change=self.on_change)
            if region.addr != addr:
                raise ValueError(f"stub region at {region.addr:#x}, the epoch reserves {addr:#x}")
            self.pool.extents.reserve(region.pool_off, region.size)
        view = self.pool.view[region.pool_off:region.pool_off + region.size]
        try:
            if view != region.content():
                region.write(view)
        finally:
            view.release()
        self.stubs = region

    # --- building ---------------------------------------------------------
    def _build(self, obj, elf, key, host=None):
        self.admit(obj)
        lay = limage.layout(elf)
        try:
            extent_va, base, pool_off = self._allocate(elf, lay)
        except BrokerError:
            if not self.make_room():
                raise
            extent_va, base, pool_off = self._allocate(elf, lay)
        # placed before its scope is built: a dependency cycle (libA needs
        # libB needs libA) relocates against this placement, bytes to come
        self._building[key] = limage.PlacedImage(key, base, pool_off, lay.pool_size, None)
        try:
            scope = [(elf, base, False)]
            dep_keys = []
            for d in self.deps_of(obj):
                if d.is_glibc:
                    scope.append((d.elf, 0, True))
                    continue
                placed = self.place(d)
                scope.append((d.elf, placed.base, False))
                if placed.key in self.images:      # not a back edge of a cycle
                    dep_keys.append(placed.key)
            if host is not None and host.elf is not elf:
                # the program dlopening it (loader/image.py): last, for
                # what the object's own closure leaves undefined
                placed = self.place(host)
                scope.append((host.elf, placed.base, False))
                if placed.key in self.images:
                    dep_keys.append(placed.key)
            out = self.pool.view[pool_off:pool_off + lay.pool_size]
            if self.text_in_pool:
                info = self.builder(elf, base, scope, out, key=key, stubs=self.stubs)
            else:
                info = self._build_sparse(elf, base, scope, out, key)
        except BaseException:
            self.pool.free(pool_off)
            self._free_va(extent_va)
            raise
        finally:
            del self._building[key]
        placed = limage.PlacedImage(key, base, pool_off, lay.pool_size, info)
        sparse = not self.text_in_pool
        sha = image_digest(out, info, sparse)
        rec = ImageRecord(key, obj.path, getattr(obj, "soname", None) or elf.soname or "",
                          placed, extent_va, sha, sorted(set(dep_keys)))
        rec.sparse = sparse
        rec.relro_bytes = relro_bytes(elf)
        self._add(rec)
        self.on_change()
        return rec

    def _build_sparse(self, elf, base, scope, out, key):
        """Build in a scratch buffer, copy into the pool only what differs
        from the file: the file's pages are never written there."""
        scratch = mmap.mmap(-1, len(out))
        try:
            info = self.builder(elf, base, scope, scratch, key=key, stubs=self.stubs)
            view = memoryview(scratch)
            try:
                for a, b in limage.pool_ranges(info):
                    out[a:b] = view[a:b]
            finally:
                view.release()
        finally:
            try:
                scratch.close()
            except BufferError:
                # the builder failed holding a view of it: its own error is
                # the one to report (the mapping goes with the last view)
                pass
        return info

    def _allocate(self, elf, lay):
        if elf.e_type == ET_EXEC:
            # fixed addresses, outside the window: only ever one per process
            extent_va, base = None, 0
        else:
            align = max([PAGE] + [s.align for s in elf.loads if s.align])
            skew = lay.lo % align
            extent_va = self.placements.alloc(lay.map_size + skew, align)
            base = extent_va + skew - lay.lo
        try:
            pool_off = self.pool.alloc(lay.pool_size)
        except BaseException:
            self._free_va(extent_va)
            raise
        return extent_va, base, pool_off

    def _add(self, rec):
        self.images[rec.key] = rec
        bisect.insort(self._starts, (rec.map_start, rec.key))
        self.refs.track(rec.key, rec.deps)

    def lookup_addr(self, addr):
        i = bisect.bisect_right(self._starts, (addr, "\uffff")) - 1
        # fixed-address (ET_EXEC) programs may overlap each other: look back
        while i >= 0:
            rec = self.images[self._starts[i][1]]
            if rec.map_start <= addr < rec.map_end:
                return rec
            if rec.extent_va is not None:
                return None
            i -= 1
        return None

    def evict(self, key):
        rec = self.images.pop(key)
        self._starts.remove((rec.map_start, key))
        self.refs.untrack(key, rec.deps)
        self.pool.free(rec.placed.pool_off)
        self._free_va(rec.extent_va)
        return rec

    def _free_va(self, extent_va):
        if extent_va is not None:
            self.placements.free(extent_va)

    # --- journal --------------------------------------------------------
    def to_journal(self):
        return [{"key": r.key, "path": r.path, "soname": r.soname, "base": r.placed.base,
                 "pool_off": r.placed.pool_off, "size": r.placed.size, "extent_va": r.extent_va,
                 "map_start": r.map_start, "map_end": r.map_end, "sha256": r.sha256,
                 "deps": r.deps, "state": r.state, "relro_bytes": r.relro_bytes,
                 "sparse": r.sparse, "info": r.info_json()}
                for r in self.images.values()]

    def restore(self, entries, log):
        """Re-adopt the journal's images after a restart. Each one's pool bytes
        must still hash to what was recorded; one that does not is
        quarantined: its space stays reserved for the epoch (running programs
        may map it) but it is never handed out again."""
        bad = 0
        for e in entries:
            if e["extent_va"] is not None:
                self.placements.reserve(e["extent_va"], e["map_end"] - e["extent_va"])
            self.pool.extents.reserve(e["pool_off"], e["size"])
            state = e.get("state", "live")
            try:
                info = decode(e["info"])
            except Exception as exc:
                info, state = None, "quarantined"
                log(f"image {e['path']}: journal entry unreadable ({exc}); quarantined")
            sparse = e.get("sparse", False)
            if state == "live" and sparse and self.text_in_pool:
                state = "quarantined"
                log(f"image {e['path']}: pooled without its text, this broker keeps text in the pool; "
                    "set aside")
            if state == "live":
                got = image_digest(self.pool.view[e["pool_off"]:e["pool_off"] + e["size"]], info, sparse)
                if got != e["sha256"]:
                    state = "quarantined"
                    log(f"image {e['path']} at pool offset {e['pool_off']:#x}: content hash mismatch; quarantined")
            if state != "live":
                bad += 1
            placed = limage.PlacedImage(e["key"], e["base"], e["pool_off"], e["size"], info)
            rec = ImageRecord(e["key"], e["path"], e["soname"], placed, e["extent_va"],
                              e["sha256"], e["deps"], state)
            rec.relro_bytes = e.get("relro_bytes", 0)
            rec.sparse = sparse
            rec.restored = True
            rec._info_json = e["info"]
            if info is None:
                rec.placed = _Bare(e)
            self._add(rec)
        for rec in self.images.values():
            if rec.state == "quarantined":
                self.refs.pins[rec.key] = self.refs.pins.get(rec.key, 0) + 1   # never evicted
        return bad


def image_digest(view, info, sparse):
    """SHA-256 of an image's pool bytes; of a sparse image, only its pool
    ranges (reading the holes would allocate them)."""
    if not sparse:
        return hashlib.sha256(view).hexdigest()
    h = hashlib.sha256()
    for a, b in limage.pool_ranges(info):
        h.update(view[a:b])
    return h.hexdigest()


class _Bare:
    """Placement of an image whose info could not be restored."""

    def __init__(self, e):
        self.key, self.base, self.pool_off, self.size = e["key"], e["base"], e["pool_off"], e["size"]
        self.map_start, self.map_end, self.info = e["map_start"], e["map_end"], None


# --- a JSON codec for ImageInfo (dataclasses of loader.image) -------------------
def encode(x):
    if dataclasses.is_dataclass(x):
        return {"__dc__": type(x).__name__,
                "f": {f.name: encode(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    if isinstance(x, dict):
        return {"__d__": [[encode(k), encode(v)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"__t__": [encode(v) for v in x]}
    if isinstance(x, (set, frozenset)):
        return {"__fs__" if isinstance(x, frozenset) else "__s__": [encode(v) for v in x]}
    if isinstance(x, (bytes, bytearray)):
        return {"__b__": bytes(x).hex()}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot journal a {type(x).__name__}")


def decode(x):
    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    if "__dc__" in x:
        cls = getattr(limage, x["__dc__"], None)
        if cls is None or not dataclasses.is_dataclass(cls):
            raise ValueError(f"unknown image class {x['__dc__']}")
        return cls(**{k: decode(v) for k, v in x["f"].items()})
    if "__d__" in x:
        return {_hashable(decode(k)): decode(v) for k, v in x["__d__"]}
    if "__t__" in x:
        return tuple(decode(v) for v in x["__t__"])
    if "__fs__" in x:
        return frozenset(_hashable(decode(v)) for v in x["__fs__"])
    if "__s__" in x:
        return {_hashable(decode(v)) for v in x["__s__"]}
    if "__b__" in x:
        return bytes.fromhex(x["__b__"])
    raise ValueError("unknown journal value")


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def relro_bytes(elf):
    from loader.elf import PT_GNU_RELRO
    r = elf.segment(PT_GNU_RELRO)
    if r is None:
        return 0
    return (r.vaddr + r.memsz) // PAGE * PAGE - r.vaddr // PAGE * PAGE


def open_object(path):
    """A minimal LoadedObject for a file the broker opens itself."""
    return _Obj(os.path.realpath(path))


class _Obj:
    def __init__(self, path):
        self.path = path
        self.elf = ElfFile(path)
        self.soname = self.elf.soname
        self.is_glibc = False
