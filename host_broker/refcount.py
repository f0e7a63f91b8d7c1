"""Who uses which image: leases (one program and its dlopens) held by
clients (connections), counted per image across every client, processes and
guests alike. An image becomes evictable when no lease references it, no
other image was pre-relocated against it (pins), and its linger delay has
passed since the last release."""
import itertools
import time


class Lease:
    __slots__ = ("id", "client", "keys", "context")

    def __init__(self, lease_id, client, keys, context=None):
        self.id, self.client, self.keys, self.context = lease_id, client, keys, context


class RefCounts:
    def __init__(self, lease_prefix=0, clock=time.monotonic):
        self.refs = {}           # image key -> lease references
        self.pins = {}           # image key -> images built against it
        self.idle_since = {}     # image key -> clock() when it became unused
        self.leases = {}         # lease id -> Lease
        self.by_client = {}      # client id -> {lease id}
        self.clock = clock
        self._ids = itertools.count((lease_prefix << 32) + 1)

    # --- images -------------------------------------------------------
    def track(self, key, deps=()):
        """A new image (idle until a lease takes it), pinning its deps."""
        self.refs.setdefault(key, 0)
        self.pins.setdefault(key, 0)
        self.idle_since.setdefault(key, self.clock())
        for d in deps:
            self.pins[d] = self.pins.get(d, 0) + 1

    def untrack(self, key, deps=()):
        assert self.refs.get(key, 0) == 0 and self.pins.get(key, 0) == 0, key
        self.refs.pop(key, None)
        self.pins.pop(key, None)
        self.idle_since.pop(key, None)
        for d in deps:
            self.pins[d] -= 1

    def _inc(self, keys):
        refs, idle = self.refs, self.idle_since
        for k in keys:
            if k is not None:           # None: a dlclose'd object's hole
                refs[k] += 1
                if k in idle:
                    del idle[k]

    def _dec(self, keys):
        now = None
        refs = self.refs
        for k in keys:
            if k is not None:
                n = refs[k] - 1
                refs[k] = n
                if n == 0:
                    if now is None:
                        now = self.clock()
                    self.idle_since[k] = now

    # --- leases -------------------------------------------------------
    def new_lease(self, client, keys, context=None, lease_id=None):
        if lease_id is None:
            lease_id = next(self._ids)
        elif lease_id in self.leases:
            raise KeyError(f"lease {lease_id} is already held")
        lease = Lease(lease_id, client, list(keys), context)
        self._inc(lease.keys)
        self.leases[lease_id] = lease
        held = self.by_client.get(client)
        if held is None:
            self.by_client[client] = {lease_id}
        else:
            held.add(lease_id)
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
        lease = self.leases.pop(lease_id)
        self._dec(lease.keys)
        held = self.by_client.get(lease.client)
        if held is not None:
            held.discard(lease_id)
            if not held:
                del self.by_client[lease.client]
        return lease

    def drop_client(self, client):
        """A connection closed (any cause): release everything it held."""
        ids = list(self.by_client.get(client, ()))
        for lid in ids:
            self.release(lid)
        return len(ids)

    # --- queries --------------------------------------------------------
    def evictable(self, linger, now=None):
        now = self.clock() if now is None else now
        return [k for k, t in self.idle_since.items()
                if now - t >= linger and self.refs.get(k, 0) == 0 and self.pins.get(k, 0) == 0]

    def clients_of(self, key):
        return {l.client for l in self.leases.values() if key in l.keys}

    def check(self):
        """Counts equal what the leases hold; idle exactly when unreferenced."""
        expect = dict.fromkeys(self.refs, 0)
        for lease in self.leases.values():
            for k in lease.keys:
                if k is not None:
                    expect[k] += 1
        assert expect == self.refs, "refcounts differ from the leases"
        for k, n in self.refs.items():
            assert (n == 0) == (k in self.idle_since), f"idle state of {k} is wrong"
        for c, ids in self.by_client.items():
            assert ids and all(self.leases[i].client == c for i in ids)
        assert sum(len(v) for v in self.by_client.values()) == len(self.leases)
