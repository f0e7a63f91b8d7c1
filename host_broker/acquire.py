"""The acquire path, behind two calls the service makes: `program(req)` and
`library(lease, req)`. Each returns the plan (lease field still 0) and the
image keys the lease will hold, one per pooled object in global index order.

Plans are cached: a program started again with the same path, argv[0], cwd
and LD_* environment gets the cached plan as long as every file it names is
unchanged (stat) and every image is still in the pool, so the acquire of an
already pooled program costs a few stat calls, not a resolution."""
import collections
import os
import struct

from loader.errors import BrokerError, ResolveError
from loader.protocol import ProtocolError

HDR = struct.Struct("<8sII IIII II II 8Q QQQQ 5Q II Q")
HDR_SIZE = HDR.size          # 200: struct ldp_plan_hdr (plan version 3)
LEASE_OFF = 136
FIRST_INDEX_OFF = 44
CACHE_MAX = 512
RTLD_GLOBAL = 0x100
RTLD_DEEPBIND = 0x8


class Acquisition:
    __slots__ = ("plan", "keys", "context", "files", "placed")

    def __init__(self, plan, keys, context=None, files=(), placed=()):
        self.plan, self.keys, self.context, self.files = plan, keys, context, files
        self.placed = placed      # the PlacedImage objects the plan's addresses come from


def set_lease(plan, lease):
    if len(plan) < HDR_SIZE or plan[:8] != b"LDPPLAN1":
        raise BrokerError("plan builder returned something that is not a plan")
    return b"".join((plan[:LEASE_OFF], struct.pack("<Q", lease), plan[LEASE_OFF + 8:]))


def _stat_id(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Acquirer:
    def __init__(self, store, log=print, public_only=False):
        self.store, self.log, self.public_only = store, log, public_only
        if public_only:
            # canonical scopes pull in objects of their own: the same rule
            store.admit = lambda obj: check_public([obj])
        self.cache = collections.OrderedDict()
        self.by_payload = {}
        self.dl_cache = collections.OrderedDict()
        self.dl_hits = self.dl_builds = 0       # for STATS: dlopens answered from the cache

    # --- programs ---------------------------------------------------------
    def cached_program(self, payload):
        """The cached acquisition for this exact request payload if still
        valid, else None (cheap: runs on the event loop)."""
        hit = self.by_payload.get(payload)
        if hit is not None and self._valid(hit):
            return hit
        return None

    def program(self, req, payload=None):
        """Build (or reuse) the acquisition of a program (worker thread)."""
        ck, path, argv0, cwd, env, preload = self._cache_key(req)
        hit = self.cache.get(ck)
        if hit is None or not self._valid(hit):
            hit = self._build_program(path, argv0, cwd, env, preload)
            hit.placed = [self.store.images[k].placed for k in hit.keys]
            self.cache[ck] = hit
            if len(self.cache) > CACHE_MAX:
                self.cache.popitem(last=False)
        if payload is not None:
            # the same request bytes next time skip parsing too
            self.by_payload[bytes(payload)] = hit
            if len(self.by_payload) > CACHE_MAX:
                self.by_payload.pop(next(iter(self.by_payload)))
        return hit

    def _cache_key(self, req):
        path = req.text("path")
        if not path or not path.startswith("/"):
            raise ProtocolError("ACQUIRE_PROGRAM needs an absolute path=")
        env = {}
        for item in req.all("env"):
            name, sep, value = os.fsdecode(item).partition("=")
            if sep and name.startswith("LD_"):
                env[name] = value
        preload = [os.fsdecode(p) for p in req.all("preload")]
        argv0 = req.text("argv0", path)
        cwd = req.text("cwd", "/")
        ck = (path, argv0, cwd, tuple(sorted(env.items())), tuple(preload))
        return ck, path, argv0, cwd, env, preload

    def _valid(self, acq):
        images = self.store.images
        for k, placed in zip(acq.keys, acq.placed):
            rec = images.get(k)
            if rec is None or rec.placed is not placed:
                return False
        # every start stats the plan's files (a few microseconds): a plan
        # trusted for a while after its program was replaced on disk would
        # map text that the launcher's identity check then refuses (exit
        # 127) instead of planning the new file
        try:
            return all(_stat_id(p) == sid for p, sid in acq.files)
        except OSError:
            return False

    def _build_program(self, path, argv0, cwd, env, preload):
        from loader import plan, resolve
        try:
            res = resolve.resolve_program(path, env=env, cwd=cwd, preload=preload or None)
        except ResolveError as e:
            raise resolve.load_error(error=e) from None
        if res.missing:
            raise resolve.load_error(res)
        pooled = [o for o in res.objects if not o.is_glibc]
        if self.public_only:
            check_public(pooled)             # before any byte of them enters the pool
        blob = plan.build_plan(res, self.store, argv0=argv0)
        params = (path, argv0, cwd, env, preload)
        # identical files loaded as two objects hold two images (instances)
        keys = [p.key for p in plan.placements(res.objects, self.store).values()]
        # a changed ld.so.cache may resolve differently
        files = [(p, _stat_id(p)) for p in [o.elf.path for o in pooled] + ["/etc/ld.so.cache"]
                 if os.path.exists(p)]
        return Acquisition(blob, keys, params, files)

    # --- dlopen -----------------------------------------------------------
    # A lease's context: params (the program request), base (how many of its
    # objects are replayed by file: those it had when reclaimed), history
    # (the dlopen requests granted and the dlcloses since, in order), and a
    # resolution "res" valid for the first "n" objects of the lease (None:
    # rebuild it by replaying) with "gidx", per object of res, its global
    # index in the lease (None for glibc's family, which the lease does not
    # count).  dlclose leaves holes in the global index space.  "scopes" has
    # one character per granted dlopen, "g" for RTLD_GLOBAL: with the keys,
    # it decides which earlier objects a plan's global scope holds.
    @staticmethod
    def lease_context(params, base=0):
        return {"params": params, "base": base, "history": [], "res": None, "n": None, "gidx": None,
                "scopes": ""}

    def cached_library(self, lease, req):
        """The cached dlopen acquisition for this lease's object set and
        request if still valid, else None (cheap: runs on the event loop)."""
        ctx = lease.context
        if ctx is None:
            return None
        hit = self.dl_cache.get(self._dl_key(lease, req))
        if hit is not None and self._valid(hit):
            self.dl_hits += 1
            return hit
        return None

    def _dl_key(self, lease, req):
        path, argv0, cwd, env, preload = lease.context["params"]
        return ((path, argv0, cwd, tuple(sorted(env.items())), tuple(preload)), tuple(lease.keys),
                lease.context["scopes"], req.text("name"), req.text("requester", ""), req.int("flags", 0))

    def note_dlopen(self, lease, req):
        """The lease now holds what the request brought: replayable."""
        if lease.context is not None:
            flags = req.int("flags", 0)
            lease.context["history"].append(("open", req.text("name"), req.text("requester", ""), flags))
            lease.context["scopes"] += "g" if flags & RTLD_GLOBAL else "l"

    def note_dlclose(self, lease, indices):
        """RELEASE object=: the client unloaded these objects (global
        indices).  The lease's resolution forgets them, so that a later
        dlopen of the same library loads it again, as glibc does after the
        last dlclose."""
        ctx = lease.context
        if ctx is None or not indices:
            return
        drop = frozenset(indices)
        ctx["history"].append(("close", drop))
        if ctx["res"] is not None and ctx["n"] == len(lease.keys):
            _forget(ctx["res"], ctx["gidx"], drop)
        else:
            ctx["res"] = None

    def library(self, lease, req):
        """Build the acquisition of a dlopen (worker thread); cached for
        every lease of the same program with the same objects."""
        name = req.text("name")
        if not name:
            raise ProtocolError("ACQUIRE_LIBRARY needs name=")
        requester = req.text("requester", "")
        flags = req.int("flags", 0)
        first = len(lease.keys)
        from loader import plan, resolve
        ctx = lease.context
        if ctx is None:
            raise BrokerError("this lease was reclaimed without its program; "
                              "dlopen through it is not supported")
        res = self._resolution(lease)
        ctx["n"] = None                 # res changes below; valid again once granted
        gidx = ctx["gidx"]
        old_index = [g for g in gidx if g is not None]
        req_obj = _find_requester(res, requester)
        new = resolve.resolve_dlopen(res, name, req_obj)
        pooled = [o for o in new if not o.is_glibc]
        if self.public_only:
            check_public(pooled)
        blob = plan.build_dlopen_plan(res, new, self.store, first_index=first, old_index=old_index,
                                      local_objs=[o for o in res.objects if getattr(o, "dl_local", False)],
                                      deepbind=bool(flags & RTLD_DEEPBIND))
        _set_scope(res, name, new, flags)
        nxt = iter(range(first, first + len(pooled)))
        gidx.extend(None if o.is_glibc else next(nxt) for o in new)
        placed = plan.placements(res.objects, self.store)
        pos = {id(o): k for k, o in enumerate(res.objects)}
        keys = [placed[pos[id(o)]].key for o in pooled]
        ctx["n"] = first + len(keys)
        acq = Acquisition(blob, keys, files=[(o.elf.path, _stat_id(o.elf.path)) for o in pooled],
                          placed=[self.store.images[k].placed for k in keys])
        self.dl_builds += 1
        self.dl_cache[self._dl_key(lease, req)] = acq
        if len(self.dl_cache) > CACHE_MAX:
            self.dl_cache.popitem(last=False)
        return acq

    def _resolution(self, lease):
        """The lease's private resolution (dlopen extends it), rebuilt when
        cached grants moved the lease past it: the program resolved again,
        then what it loaded since, in order."""
        ctx = lease.context
        res = ctx["res"]
        if res is not None and ctx["n"] == len(lease.keys):
            return res
        from loader import plan, resolve
        path, _argv0, cwd, env, preload = ctx["params"]
        res = resolve.resolve_program(path, env=env, cwd=cwd, preload=preload or None)
        unusable = BrokerError("the lease's objects cannot be resolved again (changed files?); "
                               "dlopen through it is not supported")
        if res.missing:
            raise unusable
        n0 = sum(not o.is_glibc for o in res.objects)
        gidx = []

        def number(objs, indices):
            for o in objs:
                gidx.append(None if o.is_glibc else next(indices, -1))

        number(res.objects, iter(range(n0)))
        # a reclaimed lease's dlopened objects, by file (holes: dlclosed before)
        held = iter([i for i in range(n0, ctx["base"]) if lease.keys[i] is not None])
        for i in range(n0, ctx["base"]):
            k = lease.keys[i]
            if k is None or i in gidx:
                continue
            rec = self.store.images.get(k)
            if rec is None:
                raise unusable
            number(resolve.resolve_dlopen(res, rec.path, None), held)
        nxt = max(n0, ctx["base"])
        for event in ctx["history"]:
            if event[0] == "close":
                _forget(res, gidx, event[1])
                continue
            new = resolve.resolve_dlopen(res, event[1], _find_requester(res, event[2]))
            _set_scope(res, event[1], new, event[3])
            count = sum(not o.is_glibc for o in new)
            number(new, iter(range(nxt, nxt + count)))
            nxt += count
        placed = plan.placements(res.objects, self.store)
        got = {gidx[k]: p.key for k, p in placed.items()}
        want = {i: k for i, k in enumerate(lease.keys) if k is not None}
        if nxt != len(lease.keys) or got != want:
            raise unusable
        ctx["res"], ctx["n"], ctx["gidx"] = res, len(lease.keys), gidx
        return res


def _set_scope(res, name, new, flags):
    """Objects a dlopen brought in stay out of the global scope unless it
    was RTLD_GLOBAL, which (as glibc's add_to_global) adds the root's whole
    search list, also to an object loaded before."""
    root = new[0] if new else res.state.find_loaded(name)
    if root is None:
        return
    if not flags & RTLD_GLOBAL:
        for o in new:
            o.dl_local = True
        return
    queue, seen = [root], set()
    while queue:
        o = queue.pop(0)
        if o is None or id(o) in seen:
            continue
        seen.add(id(o))
        o.dl_local = False
        queue.extend(o.deps)


def _forget(res, gidx, drop):
    """Take the objects of global indices `drop` out of a lease's resolution
    (res.objects, gidx and the loader's namespace), as glibc's dlclose takes
    them out of the namespace: names match them no more."""
    keep = [k for k, g in enumerate(gidx) if g is None or g not in drop]
    if len(keep) == len(gidx):
        return
    gone = {id(res.objects[k]) for k in range(len(gidx)) if gidx[k] is not None and gidx[k] in drop}
    res.objects[:] = [res.objects[k] for k in keep]
    gidx[:] = [gidx[k] for k in keep]
    for i, o in enumerate(res.objects):
        o.index = i
    loader = res.state
    loader.chain[:] = [o for o in loader.chain if id(o) not in gone]
    for i, o in enumerate(loader.chain):
        o.seq = i
    loader.searchlist[:] = [o for o in loader.searchlist if id(o) not in gone]
    loader.by_name, loader.by_soname, loader.by_file = {}, {}, {}
    for o in loader.chain:
        loader._index(o)


def check_public(objs):
    """A broker opened to a group hands the whole pool (read-only) to every
    client, so it may only pool files that anyone may read: a file readable
    by its owner alone would be disclosed to the group."""
    for o in objs:
        try:
            mode = os.stat(o.elf.path).st_mode
        except OSError as e:
            raise BrokerError(f"{o.path}: {e.strerror}") from None
        if not mode & 0o004:
            raise BrokerError(f"{o.path}: not readable by everyone; a broker shared with a group "
                              "only pools world-readable files")


def _find_requester(res, requester):
    """The loaded object that called dlopen (for its RPATH/RUNPATH/$ORIGIN);
    None (the main program) when it is not one of the lease's objects."""
    if not requester:
        return None
    real = os.path.realpath(requester)
    for o in res.objects:
        if o.path == requester:
            return o
    for o in res.objects:
        if o.elf is not None and os.path.realpath(o.path) == real:
            return o
    return None


def empty_plan(pool_size, first_index=0, placed=()):
    """A plan with object ranges only (no segments, fixups or imports): the
    answer to a dlopen of something the lease already holds."""
    objs = b"".join(struct.pack("<QQQ", p.base, p.map_start, p.map_end) + bytes(248 - 24)
                    for p in placed)
    end = HDR_SIZE + len(objs)
    return HDR.pack(b"LDPPLAN1", 3, HDR_SIZE, len(placed), 0, 0, 0, 0, 0xFFFFFFFF, 0, first_index,
                    HDR_SIZE, *([end] * 6), 0, 0, 0, pool_size, 0, 0, 0, 0, 0, 0, 0, 0, end) + objs
