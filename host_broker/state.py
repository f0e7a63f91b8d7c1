"""The broker's durable state across restarts: pool + placements + images +
journal. A new broker first tries to re-attach to what the previous one left
(same epoch, so running programs' mappings stay meaningful); anything that
does not check out (journal corrupted, pool missing, of another size or
instance) is reported in one line and replaced by a fresh epoch."""
import os
import secrets
import threading
import time

from host_broker import journal, mapped
from host_broker.images import ImageStore
from host_broker.journal import JournalError
from host_broker.pins import Pins
from host_broker.placement import WINDOW, WINDOW_SIZE, Placements
from host_broker.pool import Pool, PoolError, PoolInUse
from host_broker.refcount import RefCounts

MAPS_EVERY = 2.0


class BrokerState:
    def __init__(self, pool_name, pool_size, journal_path, linger, log=print, **store_kw):
        self.pool_name, self.pool_size, self.journal_path = pool_name, pool_size, journal_path
        self.linger, self.log, self._store_kw = linger, log, store_kw
        self.recovered = False
        self.mutex = threading.Lock()   # refcounts vs. evictions from the build thread
        self._maps = None
        self.quarantined = 0
        self.last_flush = 0.0           # end of the last acquisition built in a worker
        d = os.path.dirname(journal_path) or "."
        for f in os.listdir(d):        # half-written journals of a killed broker
            if f.startswith(os.path.basename(journal_path) + ".tmp"):
                try:
                    os.unlink(os.path.join(d, f))
                except OSError:
                    pass
        st = self._load()
        if st is None:
            self._fresh()

    def _load(self):
        try:
            st = journal.load(self.journal_path)
        except JournalError as e:
            self.log(f"{e}; starting a fresh pool")
            return None
        if st is None:
            return None
        try:
            pool = Pool.attach(self.pool_name)
        except PoolInUse:
            raise
        except PoolError as e:
            self.log(f"{e}; starting a fresh pool")
            return None
        problem = None
        if pool.instance.hex() != st.get("instance") or pool.epoch != st.get("epoch"):
            problem = "does not match the journal (another instance)"
        elif pool.size != self.pool_size:
            problem = f"has {pool.size} bytes, {self.pool_size} requested"
        if problem:
            self.log(f"pool {self.pool_name} {problem}; starting a fresh pool")
            pool.close()
            return None
        self.created = st.get("created")
        try:
            self._setup(pool, st["slide"], st["boot"] + 1)
            self.store.attach_stubs(st["stubs"])
            self.quarantined = self.store.restore(st["images"], self.log)
            self.pins.restore(st.get("pins"), self.store.images)
            self.pins.sync(self.store.images)
        except (KeyError, TypeError, ValueError) as e:
            self.log(f"journal {self.journal_path}: inconsistent ({e}); starting a fresh pool")
            self.store = None
            pool.close()
            return None
        self.recovered = True
        self.log(f"re-attached to pool {self.pool_name}, epoch {pool.epoch}: "
                 f"{len(self.store.images)} images, {self.quarantined} quarantined")
        self.save()
        return st

    def _fresh(self):
        epoch = secrets.randbits(62) + 1
        self.created = time.time()
        placements = Placements(WINDOW, WINDOW_SIZE)
        pool = Pool.create(self.pool_name, self.pool_size, epoch, WINDOW, WINDOW_SIZE)
        self._setup(pool, placements.slide, 1, placements)
        self.store.attach_stubs()
        self.log(f"new pool {self.pool_name} ({self.pool_size >> 20} MiB), epoch {epoch}, "
                 f"slide {placements.slide:#x}")
        self.save()

    def _unmapped(self, key):
        """An image left by the previous broker may go only when no process
        maps it (scanned at most every MAPS_EVERY seconds)."""
        now = time.monotonic()
        if self._maps is None or now - self._maps[0] > MAPS_EVERY:
            ranges, complete = mapped.pool_mappings(self.store.pool_path, self.created)
            self._maps = (now, ranges, complete)
        _t, ranges, complete = self._maps
        p = self.store.images[key].placed
        return complete and not mapped.overlaps(ranges, p.pool_off, p.size)

    def _make_room(self):
        """The pool or the window is full while building: evict every
        unreferenced image now rather than after its linger delay. Runs in
        the build thread: the mutex keeps the event loop from granting a
        cached plan over an image being evicted."""
        with self.mutex:
            gone = self.sweep(linger=0)
        for rec in gone:
            self.log(f"pool full: evicted {rec.path} early")
        return bool(gone)

    def _setup(self, pool, slide, boot, placements=None):
        self.pool, self.boot = pool, boot
        self.placements = placements or Placements(pool.window, pool.window_size, slide)
        self.refs = RefCounts(lease_prefix=boot)
        self.pins = Pins(pool)
        self.dirty = False
        self.store = ImageStore(pool, self.placements, self.refs, on_change=self._changed,
                                make_room=self._make_room, **self._store_kw)

    def _changed(self):
        self.dirty = True

    def flush(self):
        """End of one acquisition: journal the images it built (a crash
        before that loses only images no client was told about)."""
        self.store.touched.clear()
        built = self.dirty
        if self.dirty:
            self.pins.sync(self.store.images)     # before any plan naming them is published
            self.save()
        self.last_flush = time.monotonic()
        if built:
            self.drop_files()

    def drop_files(self):
        """Unmap the library files the resolver keeps open: they stay in the
        page cache (clients map them), not in the broker.  ElfFiles sit in
        reference cycles (the resolution graph): collect them now."""
        import gc
        from loader.resolve import clear_caches
        clear_caches()
        gc.collect()

    def files_idle(self, now):
        """Whether the resolver's open files outlived their use: none opened
        for a while and no acquisition in the last second."""
        from loader import resolve
        return (resolve._files is not None and now - resolve._files_born > resolve.FILES_TTL
                and now - self.last_flush > 1.0)

    @property
    def epoch(self):
        return self.pool.epoch

    def save(self):
        self.dirty = False
        journal.save(self.journal_path, {
            "version": 1, "pool": self.pool_name, "pool_size": self.pool.size,
            "instance": self.pool.instance.hex(), "epoch": self.pool.epoch,
            "slide": self.placements.slide, "boot": self.boot, "saved": time.time(),
            "created": self.created, "pins": self.pins.to_journal(),
            "stubs": self.store.stubs.to_json(), "images": self.store.to_journal()})

    def sweep(self, linger=None):
        """Evict images unused for the linger delay; their space is reused.
        Caller holds self.mutex or runs on the event loop with no build
        running."""
        linger = self.linger if linger is None else linger
        gone, pinned = [], set()
        while True:
            keys = [k for k in self.refs.evictable(linger)
                    if self.store.images[k].state == "live" and k not in self.store.touched
                    and k not in pinned]
            keys = [k for k in keys if not self.store.images[k].restored or self._unmapped(k)]
            if not keys:
                break
            for k in keys:
                # a process started from a plan cache file pins its images
                # (pins.py): it lingers until that process is gone
                if not self.pins.claim(k):
                    pinned.add(k)
                    continue
                gone.append(self.store.evict(k))
                self.pins.release(k)
        if gone:
            self.save()
        return gone

    def close(self):
        self.pool.close()
