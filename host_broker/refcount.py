"""Who uses which image: leases (one program and its dlopens) held by
clients (connections), counted per image across every client, processes and
guests alike. An image becomes evictable when no lease references it, no
other image was pre-relocated against it (pins), and its linger delay has
passed since the last release.

The counts live in one place, the native LeaseTable (_native/leasetable.pyx),
indexed by a small id per image: the broker's hot path (cached program
acquires and releases, answered in C) and this Python face both write them.
Leases granted on the hot path stay native until Python code asks for one
(`leases.get`): it then becomes a Python Lease, with the same counts."""
import time
from collections.abc import Mapping

from _native.leasetable import LeaseTable


class Lease:
    __slots__ = ("id", "client", "keys", "context")

    def __init__(self, lease_id, client, keys, context=None):
        self.id, self.client, self.keys, self.context = lease_id, client, keys, context


class _Counts(Mapping):
    """image key -> references (read-only view of the native counters)."""

    def __init__(self, rc):
        self._rc = rc

    def __getitem__(self, key):
        return self._rc.table.count(self._rc.ids[key])

    def __iter__(self):
        return iter(self._rc.ids)

    def __len__(self):
        return len(self._rc.ids)


class _Idle(Mapping):
    """image key -> clock() when it became unused, for unused images only."""

    def __init__(self, rc):
        self._rc = rc

    def __getitem__(self, key):
        t = self._rc.table.idle_time(self._rc.ids[key])
        if t is None:
            raise KeyError(key)
        return t

    def __iter__(self):
        idle = self._rc.table.idle_time
        return iter([k for k, i in self._rc.ids.items() if idle(i) is not None])

    def __len__(self):
        return sum(1 for _ in self)


class _Leases:
    """lease id -> Lease: the Python leases, and the native ones on demand."""

    def __init__(self, rc):
        self._rc, self.py = rc, {}

    def get(self, lid, default=None):
        lease = self.py.get(lid)
        if lease is None:
            lease = self._rc._promote(lid)
        return default if lease is None else lease

    def __contains__(self, lid):
        return lid in self.py or self._rc.table.has_lease(lid)

    def values(self):
        """Every lease; the native ones as snapshots (not to be changed)."""
        keys = self._rc.keys
        return list(self.py.values()) + [Lease(lid, client, [keys[i] for i in ids])
                                         for lid, client, ids, _acq in self._rc.table.native_leases()]

    def __iter__(self):
        return iter([lease.id for lease in self.values()])

    def __len__(self):
        return len(self.py) + len(self._rc.table.native_leases())


class RefCounts:
    def __init__(self, lease_prefix=0, clock=time.monotonic):
        self.table = LeaseTable(lease_prefix)
        self.ids = {}            # image key -> native id
        self.keys = []           # native id -> image key (None once untracked)
        self.refs = _Counts(self)
        self.idle_since = _Idle(self)
        self.pins = {}           # image key -> images built against it
        self.leases = _Leases(self)
        self.by_client = {}      # client id -> {lease id} (Python leases)
        self.clock = clock
        # a native lease's Acquisition -> the context its Python Lease gets
        self.context_of = lambda acq: None

    # --- images -------------------------------------------------------
    def track(self, key, deps=()):
        """A new image (idle until a lease takes it), pinning its deps."""
        if key not in self.ids:
            self.ids[key] = self.table.new_image(self.clock())
            self.keys.append(key)
        self.pins.setdefault(key, 0)
        for d in deps:
            self.pins[d] = self.pins.get(d, 0) + 1

    def untrack(self, key, deps=()):
        assert self.refs.get(key, 0) == 0 and self.pins.get(key, 0) == 0, key
        i = self.ids.pop(key, None)
        if i is not None:
            self.keys[i] = None
            self.table.invalidate()      # no cached grant may name it now
        self.pins.pop(key, None)
        for d in deps:
            self.pins[d] -= 1

    def rename(self, old, new):
        """An image set aside under another key keeps its counts."""
        i = self.ids.pop(old)
        self.ids[new], self.keys[i] = i, new
        if old in self.pins:
            self.pins[new] = self.pins.pop(old)
        self.table.invalidate()

    def _id_list(self, keys):
        ids = self.ids
        return [ids[k] for k in keys if k is not None]    # None: a dlclose'd object's hole

    def _inc(self, keys):
        self.table.inc(self._id_list(keys))

    def _dec(self, keys):
        self.table.dec(self._id_list(keys), self.clock())

    # --- leases -------------------------------------------------------
    def new_lease(self, client, keys, context=None, lease_id=None):
        if lease_id is None:
            lease_id = self.table.next_lease_id()
        elif lease_id in self.leases:
            raise KeyError(f"lease {lease_id} is already held")
        lease = Lease(lease_id, client, list(keys), context)
        self._inc(lease.keys)
        self._add(lease)
        return lease

    def _add(self, lease):
        self.leases.py[lease.id] = lease
        held = self.by_client.get(lease.client)
        if held is None:
            self.by_client[lease.client] = {lease.id}
        else:
            held.add(lease.id)

    def _promote(self, lid):
        """A native lease becomes a Python one (counts unchanged)."""
        got = self.table.take(lid)
        if got is None:
            return None
        client, ids, acq = got
        lease = Lease(lid, client, [self.keys[i] for i in ids], self.context_of(acq))
        self._add(lease)
        return lease

    def extend(self, lease, keys):
        self._inc(keys)
        lease.keys.extend(keys)

    def drop_objects(self, lease, indices):
        """dlclose: global indices of the lease's objects (None marks a hole,
        keeping later indices stable)."""
        keys = []
        for i in indices:
            if 0 <= i < len(lease.keys) and lease.keys[i] is not None:
                keys.append(lease.keys[i])
                lease.keys[i] = None
        self._dec(keys)
        return len(keys)

    def release(self, lease_id):
        lease = self.leases.py.pop(lease_id, None)
        if lease is None:
            lease = self._promote(lease_id)
            if lease is None:
                raise KeyError(lease_id)
            del self.leases.py[lease_id]
        self._dec(lease.keys)
        held = self.by_client.get(lease.client)
        if held is not None:
            held.discard(lease_id)
            if not held:
                del self.by_client[lease.client]
        return lease

    def drop_client(self, client):
        """A connection closed (any cause): release everything it held in
        Python (its native leases went with LeaseTable.close)."""
        ids = list(self.by_client.get(client, ()))
        for lid in ids:
            self.release(lid)
        return len(ids)

    # --- queries --------------------------------------------------------
    def evictable(self, linger, now=None):
        now = self.clock() if now is None else now
        t = self.table
        return [k for k, i in list(self.ids.items())
                if t.count(i) == 0 and self.pins.get(k, 0) == 0
                and (idle := t.idle_time(i)) is not None and now - idle >= linger]

    def clients_of(self, key):
        return {l.client for l in self.leases.values() if key in l.keys}

    def check(self):
        """Counts equal what the leases hold; idle exactly when unreferenced."""
        expect = dict.fromkeys(self.ids, 0)
        leases = self.leases.values()
        for lease in leases:
            for k in lease.keys:
                if k is not None:
                    expect[k] += 1
        assert expect == dict(self.refs), "refcounts differ from the leases"
        for k, n in self.refs.items():
            assert (n == 0) == (k in self.idle_since), f"idle state of {k} is wrong"
        for c, ids in self.by_client.items():
            assert ids and all(self.leases.py[i].client == c for i in ids)
        assert sum(len(v) for v in self.by_client.values()) == len(self.leases.py)
        assert len({lease.id for lease in leases}) == len(leases)
