"""The STATS answer: what the pool holds, who uses it and what it saves,
filtered per requester so that "is X pooled" never reveals another user's
programs: images are listed only when a client of the requester's uid
acquired them this epoch, clients only when they have the requester's uid
(root and the broker's own uid see everything); the rest is only counted."""
import os
import time

from loader import protocol as P


def stats_for(broker, uid):
    st = broker.state
    refs = st.refs
    store = st.store
    see_all = uid in (0, os.getuid())
    now = refs.clock()
    leases = list(refs.leases.values())
    clients_of = {}
    for lease in leases:
        for k in lease.keys:
            if k is not None:
                clients_of.setdefault(k, set()).add(lease.client)
    images, hidden = [], 0
    tot = {"images": 0, "pool_bytes": 0, "refs": 0, "saved_bytes_estimate": 0,
           "private_bytes_ldso_estimate": 0}
    for rec in list(store.images.values()):
        n = refs.refs.get(rec.key, 0)
        tot["images"] += 1
        tot["pool_bytes"] += rec.placed.size
        tot["refs"] += n
        # under ld.so every process relocates RELRO privately; from the pool
        # all of them share one copy (fixup pages aside)
        tot["private_bytes_ldso_estimate"] += n * rec.relro_bytes
        tot["saved_bytes_estimate"] += max(n - 1, 0) * rec.relro_bytes
        if not (see_all or uid in rec.uids):
            hidden += 1
            continue
        idle = refs.idle_since.get(rec.key)
        images.append({
            "key": rec.key, "path": rec.path, "soname": rec.soname,
            "base": hex(rec.placed.base), "map_start": hex(rec.map_start),
            "va_size": rec.map_end - rec.map_start, "pool_off": rec.placed.pool_off,
            "pool_size": rec.placed.size, "relro_bytes": rec.relro_bytes,
            "sparse": rec.sparse,
            "refs": n, "pins": refs.pins.get(rec.key, 0),
            "clients": len(clients_of.get(rec.key, ())),
            "state": rec.state if n or rec.state != "live" or idle is None else "lingering",
            "linger_left": (max(0.0, round(st.linger - (now - idle), 3)) if idle is not None else None),
            "deps": rec.deps})
    clients, hidden_clients = [], 0
    per_client = {}
    for lease in leases:
        c = per_client.setdefault(lease.client, [0, 0])
        c[0] += 1
        c[1] += sum(1 for k in lease.keys if k is not None)
    every = broker.all_clients()
    for c in every:
        if not (see_all or c.uid == uid):
            hidden_clients += 1
            continue
        nl, nr = per_client.get(c.id, (0, 0))
        clients.append({"id": c.id, "kind": c.kind, "pid": c.pid, "uid": c.uid, "name": c.name,
                        "leases": nl, "refs": nr,
                        "lease_ids": sorted(l.id for l in leases if l.client == c.id)})
    try:
        refs.check()
        consistent = True
    except AssertionError:
        consistent = False
    tot.update(consistent=consistent, hidden_images=hidden, clients=len(every), hidden_clients=hidden_clients,
               leases=len(leases), pool_used=st.pool.extents.used_bytes,
               window_used=st.placements.extents.used_bytes,
               pool_resident=st.pool.resident_bytes(),
               dlopen_cached=broker.acquirer.dl_hits, dlopen_built=broker.acquirer.dl_builds,
               hot_answered=refs.table.hits, hot_handed=refs.table.handed,
               door_accepted=refs.table.door_accepted, door_adopted=refs.table.door_adopted)
    return {"proto": P.PROTO_VERSION, "epoch": st.epoch, "pool": st.pool_name,
            "pool_size": st.pool.size, "pool_used": st.pool.extents.used_bytes,
            "window": hex(st.pool.window), "window_size": hex(st.pool.window_size),
            "slide": hex(st.placements.slide), "linger": st.linger, "boot": st.boot,
            "recovered": st.recovered, "broker_pid": os.getpid(), "time": time.time(),
            "images": images, "clients": clients, "totals": tot, "stubs": _stubs(st)}


def _stubs(st):
    """The epoch's glibc stub region and slot table (loader/stubs.py): one
    range, named so that memory accounting can charge it (the slot pages
    are private in every process)."""
    s = st.store.stubs
    if s is None:
        return None
    return {"name": STUBS_LABEL, "start": hex(s.addr), "end": hex(s.slots_addr + s.slots_size),
            "slots_addr": hex(s.slots_addr), "registered": len(s.names), "capacity": s.capacity}


STUBS_LABEL = "[ldpool glibc stubs]"
