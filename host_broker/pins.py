"""Pins: references to pool images that the kernel keeps, with no broker
involved, so that ldpool-exec can start a program from a plan cache file
(host_broker/plancache.py) without waiting for the broker's answer.

The pool's pin table (host_broker/pool.py: PIN_OFF, PIN_SLOTS) holds one u64
stamp per image slot. Placing an image writes a fresh random nonzero stamp
in its slot. A client pins an image by taking an OFD read lock
(F_OFD_SETLK, F_RDLCK) on the slot's 8 bytes through its own read-only
open of the pool, then checking the stamp; the kernel drops the lock when
the client's last descriptor of that open file goes (exit, crash, exec).
Eviction first takes a write lock on the slot through the broker's own
read-write descriptor: if a client holds it, the image lingers; otherwise
the stamp becomes 0 before the space is reused, so a client that locks
later sees the mismatch.

OFD locks, not process-associated ones (lockf, F_SETLK): those never
conflict within one process and vanish when any descriptor of the file is
closed. The slot of each image is journaled (state.py); the stamps live in
the pool and survive the broker with it."""
import fcntl
import heapq
import os
import secrets
import struct

from host_broker.pool import PIN_OFF, PIN_SLOTS

F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock on x86-64: short l_type, l_whence; off_t l_start, l_len; pid_t l_pid (0 for OFD locks)
_FLOCK = struct.Struct("hhxxxxqqi4x")
_STAMP = struct.Struct("<Q")


class Pins:
    def __init__(self, pool):
        self.pool = pool
        self.slot = {}           # image key -> slot index
        self._free = []          # heap of released slots below _top
        self._top = 0            # slots >= _top were never used

    # --- slots ------------------------------------------------------------
    def stamp(self, key):
        """(slot, stamp) of an image, None when it has no slot."""
        s = self.slot.get(key)
        if s is None:
            return None
        return s, _STAMP.unpack_from(self.pool.mm, PIN_OFF + 8 * s)[0]

    def assign(self, key):
        """A slot with a fresh stamp for a newly placed image; None when the
        table is full (the image then never takes the fast path)."""
        if self._free:
            s = heapq.heappop(self._free)
        elif self._top < PIN_SLOTS:
            s, self._top = self._top, self._top + 1
        else:
            return None
        self.slot[key] = s
        _STAMP.pack_into(self.pool.mm, PIN_OFF + 8 * s, secrets.randbits(64) | 1)
        return s

    def _drop(self, key):
        s = self.slot.pop(key)
        _STAMP.pack_into(self.pool.mm, PIN_OFF + 8 * s, 0)
        heapq.heappush(self._free, s)

    def sync(self, images):
        """Slots for live images that have none; stale slots freed (an image
        set aside or gone)."""
        for key in [k for k in self.slot if k not in images or images[k].state != "live"]:
            self._drop(key)
        for key, rec in images.items():
            if key not in self.slot and rec.state == "live":
                self.assign(key)

    # --- eviction -----------------------------------------------------------
    def _lock(self, s, kind):
        fl = _FLOCK.pack(kind, os.SEEK_SET, PIN_OFF + 8 * s, 8, 0)
        try:
            fcntl.fcntl(self.pool.rw_fd(), F_OFD_SETLK, fl)
            return True
        except (BlockingIOError, PermissionError):   # EAGAIN / EACCES: a client holds it
            return False

    def claim(self, key):
        """Before evicting: True when no client pins the image (the broker
        then holds the slot's write lock until release())."""
        s = self.slot.get(key)
        return s is None or self._lock(s, fcntl.F_WRLCK)

    def release(self, key):
        """After evicting: stamp 0 (later locks see a different image), the
        slot is free, the lock goes."""
        s = self.slot.get(key)
        if s is not None:
            self._drop(key)
            self._lock(s, fcntl.F_UNLCK)

    def pinned(self, key):
        """Whether a client pins the image now (stats, tests)."""
        if not self.claim(key):
            return True
        s = self.slot.get(key)
        if s is not None:
            self._lock(s, fcntl.F_UNLCK)
        return False

    # --- journal --------------------------------------------------------------
    def to_journal(self):
        return dict(self.slot)

    def restore(self, slots, images):
        """Slots of the journal's images; an image that cannot keep its slot
        has its stamp cleared (plans naming it take the slow path)."""
        taken = set()
        for key, s in (slots or {}).items():
            if not (isinstance(s, int) and 0 <= s < PIN_SLOTS) or s in taken:
                continue
            rec = images.get(key)
            if rec is None or rec.state != "live":
                _STAMP.pack_into(self.pool.mm, PIN_OFF + 8 * s, 0)
                continue
            self.slot[key] = s
            taken.add(s)
        used = set(self.slot.values())
        self._top = max(used) + 1 if used else 0
        self._free = [s for s in range(self._top) if s not in used]
        heapq.heapify(self._free)
        for s in self._free:
            _STAMP.pack_into(self.pool.mm, PIN_OFF + 8 * s, 0)
