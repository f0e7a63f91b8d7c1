"""The broker's native hot path (_native/leasetable.pyx, read by
host_broker/connection.py): cached program acquires, releases and pings
answered in C, everything else handed back to Python in order, with one set
of reference counts.  Each test checks through STATS that the native path
really answered (`hot_answered`), so none passes on the Python path alone."""
import os
import random
import shutil
import signal
import socket
import struct
import time

import pytest

from broker_helpers import BrokerProc, broker, raw_connect, reply, wait_for  # noqa: F401  (broker is a fixture)
from loader import protocol as P

XZ = "/usr/bin/xz"
HELLO = P.frame(P.HELLO, P.encode_kv({"proto": 1, "kind": "guest", "name": "native"}))
LEASE_OFF = 136


def _acq(path=XZ):
    return P.frame(P.ACQUIRE_PROGRAM, P.encode_kv({"path": path, "argv0": path, "cwd": "/"}))


def _rel(lid):
    return P.frame(P.RELEASE, b"lease=%d\0" % lid)




def _lease(payload):
    return struct.unpack_from("<Q", payload, LEASE_OFF)[0]


def _totals(b):
    return b.stats()["totals"]


def test_cached_acquires_and_releases_are_answered_natively(broker):
    """After one grant through Python, the same request is answered by the
    table: STATS sees its leases and counts as any other, and releases
    bring them back to zero."""
    with raw_connect(broker.socket) as s:
        s.sendall(HELLO)
        reply(s)
        s.sendall(_acq())
        first = reply(s)[1]
        hits0 = _totals(broker)["hot_answered"]
        leases = []
        for _ in range(5):
            s.sendall(_acq())
            op, plan = reply(s)
            assert op == P.ACQUIRE_PROGRAM | P.REPLY
            # the same plan, only the lease differs
            assert plan[:LEASE_OFF] == first[:LEASE_OFF] and plan[LEASE_OFF + 8:] == first[LEASE_OFF + 8:]
            leases.append(_lease(plan))
        assert len(set(leases + [_lease(first)])) == 6 and leases == sorted(leases)
        st = broker.stats()
        assert st["totals"]["hot_answered"] >= hits0 + 5
        assert st["totals"]["consistent"] and st["totals"]["leases"] == 6
        me = [c for c in st["clients"] if c["name"] == "native"][0]
        assert sorted(me["lease_ids"]) == sorted(leases + [_lease(first)])
        nimg = st["totals"]["images"]
        assert st["totals"]["refs"] == 6 * nimg
        s.sendall(b"".join(_rel(lid) for lid in leases + [_lease(first)]))
        for _ in range(6):
            assert reply(s)[0] == P.RELEASE | P.REPLY
        t = _totals(broker)
        assert t["refs"] == 0 and t["leases"] == 0 and t["consistent"]
        assert t["hot_answered"] >= hits0 + 10


def test_new_connections_hello_and_acquire_in_one_write(broker):
    """As ldpool-exec starts: a new connection per program, HELLO and
    ACQUIRE_PROGRAM in one write (read by Python, before the connection is
    hot): the acquire is still granted from the native entry, and the
    close releases it."""
    def start():
        s = raw_connect(broker.socket)
        s.sendall(HELLO + _acq())
        reply(s)
        return s, reply(s)[1]

    s, first = start()
    s.close()
    hits = _totals(broker)["hot_answered"]
    socks = [start() for _ in range(5)]
    assert _totals(broker)["hot_answered"] == hits + 5
    for s, plan in socks:
        assert plan[LEASE_OFF + 8:] == first[LEASE_OFF + 8:]
    t = _totals(broker)
    assert t["leases"] == 5 and t["refs"] == 5 * t["images"] and t["consistent"]
    for s, _plan in socks:
        s.close()
    wait_for(lambda: _totals(broker)["leases"] == 0, what="the leases to go")
    t = _totals(broker)
    assert t["refs"] == 0 and t["consistent"]


def test_mixed_pipeline_in_odd_chunks(broker):
    """Hot and not-hot requests pipelined, cut at arbitrary byte boundaries:
    replies come back in request order whoever answers them, and a
    connection goes back to the table once Python is done with it."""
    with raw_connect(broker.socket) as s:                 # the plan is cached from here on
        s.sendall(HELLO + _acq())
        reply(s)
        reply(s)
    stream = (HELLO + _acq() + P.frame(P.PING) + _acq() + P.frame(P.STATS) + _acq()
              + P.frame(P.PING) + _acq("/nonexistent/prog") + _acq() + P.frame(P.PING))
    expect = [P.HELLO, P.ACQUIRE_PROGRAM, P.PING, P.ACQUIRE_PROGRAM, P.STATS, P.ACQUIRE_PROGRAM,
              P.PING, P.ERROR, P.ACQUIRE_PROGRAM, P.PING]
    hits0 = _totals(broker)["hot_answered"]
    for chunk in (1, 5, 13, 64, 301, len(stream)):
        socks = [raw_connect(broker.socket) for _ in range(6)]
        try:
            for k in range(0, len(stream), chunk):
                for s in socks:
                    s.sendall(stream[k:k + chunk])
            for s in socks:
                ops, leases = [], []
                for want in expect:
                    op, payload = P.recv_frame(s)
                    ops.append(op if op == P.ERROR else op & ~P.REPLY)
                    if op == P.ACQUIRE_PROGRAM | P.REPLY:
                        leases.append(_lease(payload))
                assert ops == expect
                # releases in odd chunks too, then acquires again (hot by now)
                rel = b"".join(_rel(lid) for lid in leases) + _acq() + _acq()
                for k in range(0, len(rel), 7):
                    s.sendall(rel[k:k + 7])
                for _ in leases:
                    assert reply(s)[0] == P.RELEASE | P.REPLY
                again = [_lease(reply(s)[1]) for _ in range(2)]
                s.sendall(_rel(again[0]) + _rel(again[1]))
                assert [reply(s)[0] for _ in range(2)] == [P.RELEASE | P.REPLY] * 2
            for s in socks:
                # every request answered, each connection idle: back in the table
                hits = _totals(broker)["hot_answered"]
                s.sendall(_acq())
                s.sendall(_rel(_lease(reply(s)[1])))
                assert reply(s)[0] == P.RELEASE | P.REPLY
                assert _totals(broker)["hot_answered"] == hits + 2
        finally:
            for s in socks:
                s.close()
    t = _totals(broker)
    assert t["refs"] == 0 and t["leases"] == 0 and t["consistent"]
    assert t["hot_answered"] > hits0


def test_release_of_a_lease_not_held(broker):
    """The table answers a RELEASE only for a lease of its own connection:
    another connection's lease, an unknown one, a malformed one go to
    Python and get their error; the owner still releases its lease."""
    a, b = raw_connect(broker.socket), raw_connect(broker.socket)
    try:
        for s in (a, b):
            s.sendall(HELLO)
            reply(s)
        a.sendall(_acq() + _acq())
        l1, l2 = _lease(reply(a)[1]), _lease(reply(a)[1])      # l2: native
        hits = _totals(broker)["hot_answered"]
        for payload, what in ((b"lease=%d\0" % l2, "not held by this connection"),
                              (b"lease=%d\0" % (l2 + 1000), "not held by this connection"),
                              (b"lease=%d\0" % l1, "not held by this connection"),
                              (b"lease=12x\0", "not a number"),
                              (b"lease=\0", "")):
            b.sendall(P.frame(P.RELEASE, payload))
            op, msg = P.recv_frame(b)
            assert op == P.ERROR and what in msg.decode(), msg
        t = _totals(broker)
        assert t["leases"] == 2 and t["consistent"] and t["refs"] == 2 * t["images"]
        a.sendall(_rel(l2) + _rel(l1) + _rel(l1))
        assert reply(a)[0] == P.RELEASE | P.REPLY
        assert reply(a)[0] == P.RELEASE | P.REPLY
        op, msg = P.recv_frame(a)
        assert op == P.ERROR and b"not held" in msg
        t = _totals(broker)
        assert t["refs"] == 0 and t["leases"] == 0 and t["consistent"]
        assert t["hot_answered"] >= hits          # l2 went through Python (promoted): fine
    finally:
        a.close()
        b.close()


def test_a_native_lease_serves_dlopen_and_close_releases_it(broker):
    """A lease granted in C becomes a Python lease when ACQUIRE_LIBRARY
    needs it (its context made then); closing the connection releases
    both kinds."""
    lib = "libz.so.1"
    if not any(os.path.exists(os.path.join(d, lib)) for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")):
        pytest.skip("no libz")
    s = raw_connect(broker.socket)
    s.sendall(HELLO + _acq() + _acq())
    for _ in range(3):
        reply(s)
    hits = _totals(broker)["hot_answered"]
    s.sendall(_acq())
    lid = _lease(reply(s)[1])
    assert _totals(broker)["hot_answered"] > hits
    s.sendall(P.frame(P.ACQUIRE_LIBRARY, P.encode_kv(
        {"lease": lid, "name": lib, "requester": XZ, "flags": 2})))
    op, plan = reply(s)
    assert op == P.ACQUIRE_LIBRARY | P.REPLY and _lease(plan) == lid
    st = broker.stats()
    assert st["totals"]["consistent"] and st["totals"]["leases"] == 3
    zimg = [im for im in st["images"] if im["soname"] == lib]
    assert zimg and zimg[0]["refs"] == 1
    s.close()
    wait_for(lambda: _totals(broker)["leases"] == 0, what="the connection's leases to go")
    t = _totals(broker)
    assert t["refs"] == 0 and t["consistent"]


def test_program_replaced_on_disk_is_planned_again(tmp_path, broker):
    """The table stats the plan's files on every acquire: a program
    replaced (new inode) after its plan went native gets a new plan."""
    prog = str(tmp_path / "xzcopy")
    shutil.copy(XZ, prog)
    with raw_connect(broker.socket) as s:
        s.sendall(HELLO + _acq(prog) + _acq(prog))
        reply(s)
        p1 = reply(s)[1]
        reply(s)
        old_ino = os.stat(prog).st_ino
        hits = _totals(broker)["hot_answered"]
        s.sendall(_acq(prog))
        p2 = reply(s)[1]
        assert p2[LEASE_OFF + 8:] == p1[LEASE_OFF + 8:]
        assert _totals(broker)["hot_answered"] > hits
        tmp = prog + ".new"
        shutil.copy(XZ, tmp)
        os.replace(tmp, prog)
        s.sendall(_acq(prog))
        p3 = reply(s)[1]
        assert struct.pack("<Q", os.stat(prog).st_ino) in p3
        assert struct.pack("<Q", old_ino) not in p3
        s.sendall(_acq(prog))           # the new plan is native from now on
        p4 = reply(s)[1]
        assert p4[LEASE_OFF + 8:] == p3[LEASE_OFF + 8:]
        assert _totals(broker)["consistent"]


def test_eviction_drops_native_entries(tmp_path):
    """An evicted image takes every native entry with it: the next acquire
    builds again (no lease on a dead image), counts stay exact."""
    b = BrokerProc(tmp_path / "b", linger=0.2).start()
    try:
        with raw_connect(b.socket) as s:
            s.sendall(HELLO + _acq() + _acq())
            reply(s)
            l1, l2 = _lease(reply(s)[1]), _lease(reply(s)[1])
            s.sendall(_acq())
            l3 = _lease(reply(s)[1])
            assert _totals(b)["hot_answered"] > 0
            s.sendall(_rel(l1) + _rel(l2) + _rel(l3))
            for _ in range(3):
                reply(s)
            wait_for(lambda: _totals(b)["images"] == 0, what="eviction")
            s.sendall(_acq())
            lid = _lease(reply(s)[1])
            t = _totals(b)
            assert t["images"] > 0 and t["refs"] == t["images"] and t["consistent"]
            s.sendall(_rel(lid))
            reply(s)
    finally:
        b.cleanup()


def _churn(path, seed):
    """A client process: acquire/release back to back until killed."""
    rnd = random.Random(seed)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(HELLO)
    P.recv_frame(s)
    held = []
    while True:
        s.sendall(_acq())
        held.append(_lease(P.recv_frame(s)[1]))
        if len(held) > 3 or rnd.random() < 0.5:
            s.sendall(_rel(held.pop(0)))
            P.recv_frame(s)


def test_kill_9_under_load_leaves_exact_counts(broker):
    """Clients hammering the hot path are killed with SIGKILL at random
    moments, new ones take their place; after each settle every count is
    exactly what the live leases hold, and at the end nothing is left."""
    rnd = random.Random(4)
    with raw_connect(broker.socket) as s:
        s.sendall(HELLO + _acq())
        reply(s)
        reply(s)
    hits0 = _totals(broker)["hot_answered"]

    def spawn(k):
        pid = os.fork()
        if pid == 0:
            try:
                _churn(broker.socket, k)
            finally:
                os._exit(0)
        return pid

    pids = [spawn(k) for k in range(8)]
    try:
        for it in range(40):
            time.sleep(rnd.uniform(0, 0.03))
            victim = pids.pop(rnd.randrange(len(pids)))
            os.kill(victim, signal.SIGKILL)
            os.waitpid(victim, 0)
            pids.append(spawn(100 + it))
            if it % 10 == 9:
                assert _totals(broker)["consistent"]
    finally:
        for p in pids:
            os.kill(p, signal.SIGKILL)
            os.waitpid(p, 0)
    t = wait_for(lambda: (lambda t: t if t["leases"] == 0 else None)(_totals(broker)),
                 what="every lease released")
    assert t["refs"] == 0 and t["consistent"]
    assert t["hot_answered"] > hits0 + 100


def test_table_in_process_partial_frames_and_unsent_replies(tmp_path):
    """The table alone, on a socketpair: a reply larger than the socket
    takes comes back as unsent bytes (then the unread requests, in order);
    a partial frame is handed back whole; counts follow every grant and
    release, and a native lease taken by Python keeps its count."""
    import select
    from host_broker.refcount import RefCounts
    rc = RefCounts(lease_prefix=7)
    for k in ("a", "b"):
        rc.track(k)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    st = os.stat(f)
    sid = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    plan = bytearray(200_000)
    plan[:8] = b"LDPPLAN1"
    payload = b"path=/x\0"
    reply = struct.pack("<II", len(plan), P.ACQUIRE_PROGRAM | P.REPLY) + bytes(plan)
    acq = object()
    rc.table.register(payload, reply, [rc.ids["a"], rc.ids["b"]], [(os.fsencode(f), sid)], 0, acq)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ep = select.epoll()
    ep.register(ours.fileno(), select.EPOLLIN)
    rc.table.activate(ours.fileno(), 1, 0, False)
    acq_frame = P.frame(P.ACQUIRE_PROGRAM, payload)
    theirs.sendall(acq_frame + P.frame(P.PING) + acq_frame[:5])
    n, up = rc.table.serve(ep.fileno())
    assert n == 1 and len(up) == 1
    fd, _ev, unsent, rest = up[0]
    assert fd == ours.fileno() and unsent and len(unsent) < len(reply)
    assert rest == P.frame(P.PING) + acq_frame[:5]       # unread, in order
    assert dict(rc.refs) == {"a": 1, "b": 1} and rc.idle_since.get("a") is None
    sent = theirs.recv(1 << 20, socket.MSG_DONTWAIT)
    got = sent + b""
    while len(got) < len(reply) - len(unsent):
        got += theirs.recv(1 << 20, socket.MSG_DONTWAIT)
    lid = struct.unpack_from("<Q", got, 8 + LEASE_OFF)[0]
    assert lid >> 32 == 7 and (got + unsent)[8 + LEASE_OFF + 8:] == reply[8 + LEASE_OFF + 8:]
    # handed back: not read any more until activated again
    theirs.sendall(P.frame(P.PING))
    n, up = rc.table.serve(ep.fileno())
    assert up == [(ours.fileno(), select.EPOLLIN, None, None)]
    ours.recv(4096)
    rc.table.activate(ours.fileno(), 1, 0, False)
    theirs.sendall(_rel(lid) + _rel(lid))      # the second one is not held any more: Python's
    n, up = rc.table.serve(ep.fileno())
    assert up[0][2] is None and up[0][3] == _rel(lid)
    assert dict(rc.refs) == {"a": 0, "b": 0} and rc.idle_since["a"] > 0
    assert theirs.recv(64) == struct.pack("<II", 0, P.RELEASE | P.REPLY)
    # a native lease taken over by Python keeps its counts; close releases the rest
    small = b"path=/y\0"
    rc.table.register(small, struct.pack("<II", 300, P.ACQUIRE_PROGRAM | P.REPLY) + bytes(plan[:300]),
                      [rc.ids["a"], rc.ids["b"]], [(os.fsencode(f), sid)], 0, acq)
    acq_frame = P.frame(P.ACQUIRE_PROGRAM, small)
    rc.table.activate(ours.fileno(), 1, 0, False)
    theirs.sendall(acq_frame + acq_frame)
    n, up = rc.table.serve(ep.fileno())
    assert not up and dict(rc.refs) == {"a": 2, "b": 2}
    assert len(theirs.recv(4096)) == 2 * 308
    lids = sorted(lid for lid, *_ in rc.table.native_leases())
    lease = rc.leases.get(lids[0])
    assert lease.keys == ["a", "b"] and lease.client == 1 and lids[0] in rc.leases.py
    rc.check()
    assert rc.table.close(ours.fileno()) == 1
    assert dict(rc.refs) == {"a": 1, "b": 1}
    assert rc.drop_client(1) == 1 and dict(rc.refs) == {"a": 0, "b": 0}
    rc.check()
    # a file changed on disk: the entry is not used (the request goes up)
    rc.table.activate(ours.fileno(), 1, 0, False)
    f.write_bytes(b"yy")
    theirs.sendall(acq_frame)
    n, up = rc.table.serve(ep.fileno())
    assert up[0][3] == acq_frame and dict(rc.refs) == {"a": 0, "b": 0}
    ours.close()
    theirs.close()
