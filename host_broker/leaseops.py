"""The broker's lease operations (a mixin of service.Broker): dlopen
(ACQUIRE_LIBRARY) extends a lease, RELEASE ends it or drops objects from it
(dlclose), RECLAIM takes one back after a broker restart.  The hot RELEASE
(lease=N of a lease granted natively) never gets here: _native/leasetable.pyx
answers it."""
import asyncio
import os

from host_broker.acquire import set_lease
from loader import protocol as P
from loader.errors import BrokerError


class LeaseOps:
    def _note_uid(self, client, keys):
        images = self.state.store.images
        for k in keys:
            if k is not None:
                images[k].uids.add(client.uid)

    def _lease(self, client, req):
        lid = req.int("lease")
        lease = self.state.refs.leases.get(lid)
        if lease is None or lease.client != client.id:
            raise BrokerError(f"lease {lid} is not held by this connection")
        return lease

    def _acquire_library(self, client, payload):
        req = P.Request.decode(payload)
        lease = self._lease(client, req)
        with self.state.mutex:
            acq = self.acquirer.cached_library(lease, req)
            if acq is not None:
                return self._extend(client, lease, req, acq)
        return self._build_library(client, req, lease)

    async def _build_library(self, client, req, lease):
        async with self._build_lock:
            acq = await asyncio.to_thread(self._in_worker, self.acquirer.library, lease, req)
            if lease.id not in self.state.refs.leases:
                raise BrokerError(f"lease {lease.id} was released meanwhile")
            return self._extend(client, lease, req, acq)

    def _extend(self, client, lease, req, acq):
        self.state.refs.extend(lease, acq.keys)
        self.acquirer.note_dlopen(lease, req)
        self._note_uid(client, acq.keys)
        return set_lease(acq.plan, lease.id)

    def _release(self, client, payload):
        if payload[:6] == b"lease=" and payload.find(b"\0") == len(payload) - 1:
            # the usual RELEASE, lease=N and nothing else: no key=value parse
            try:
                lease = self.state.refs.leases.get(int(payload[6:-1]))
            except ValueError:
                lease = None
            if lease is not None and lease.client == client.id:
                self.state.refs.release(lease.id)
                return b""
        req = P.Request.decode(payload)
        lease = self._lease(client, req)
        objs = req.all("object")
        if objs:
            try:
                idx = [int(o) for o in objs]
            except ValueError:
                raise P.ProtocolError("object= must be a decimal object index") from None
            self.state.refs.drop_objects(lease, idx)
            self.acquirer.note_dlclose(lease, idx)
        else:
            self.state.refs.release(lease.id)
        return b""

    def _reclaim(self, client, payload):
        req = P.Request.decode(payload)
        st = self.state
        if req.int("epoch") != st.epoch:
            raise BrokerError("epoch changed: the pool was rebuilt; keep running without references")
        lid = req.int("lease")
        keys = []
        for a in req.all("addr"):
            try:
                addr = int(a, 16)
            except ValueError:
                raise P.ProtocolError("addr= must be hexadecimal") from None
            if addr == 0:                   # a dlclose'd object: keeps later indices
                keys.append(None)
                continue
            rec = st.store.lookup_addr(addr)
            if rec is None or rec.state != "live":
                raise BrokerError(f"address {os.fsdecode(a)} is in no image of this epoch")
            keys.append(rec.key)
        if lid in st.refs.leases:
            raise BrokerError(f"lease {lid} is already held")
        ctx = None
        if req.get("path") is not None:     # the program as acquired: dlopen works again
            _ck, path, argv0, cwd, env, preload = self.acquirer._cache_key(req)
            ctx = self.acquirer.lease_context((path, argv0, cwd, env, preload), base=len(keys))
        st.refs.new_lease(client.id, keys, ctx, lease_id=lid)
        self._note_uid(client, keys)
        self.log(f"client {client.id} reclaimed lease {lid} ({len(keys)} objects)")
        return P.encode_kv([("lease", lid), ("objects", sum(k is not None for k in keys))])
