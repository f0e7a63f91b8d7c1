"""The broker's request path (host_broker/connection.py): silent clients do
not hold up the others, pipelined and split frames over the shared epoll
set, and the scheduling options (--priority)."""
import os
import socket
import struct
import time

import pytest

from broker_helpers import BrokerProc, broker, raw_connect, reply, wait_for  # noqa: F401  (broker is a fixture)
from loader import protocol as P

ACQ = P.frame(P.ACQUIRE_PROGRAM, P.encode_kv({"path": "/usr/bin/xz", "argv0": "xz", "cwd": "/"}))
HELLO = P.frame(P.HELLO, P.encode_kv({"proto": 1, "kind": "guest", "name": "hotpath"}))



def test_silent_clients_do_not_stall_the_others(broker):
    """A connection that sends nothing is only watched: 300 of them at once
    cost the others nothing (a blocking wait for a new client's first bytes
    would stall the whole loop for each)."""
    with raw_connect(broker.socket) as s:
        s.sendall(HELLO)
        reply(s)
        silent = []
        try:
            for _ in range(300):
                q = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                silent.append(q)
                q.connect(broker.socket)
            t0 = time.monotonic()
            s.sendall(P.frame(P.PING))
            assert reply(s)[0] == P.PING | P.REPLY
            assert time.monotonic() - t0 < 0.5       # 300 x 2 ms of blocking would be 0.6 s
            # and a silent client that speaks later is answered
            silent[0].sendall(HELLO)
            assert reply(silent[0])[0] == P.HELLO | P.REPLY
        finally:
            for q in silent:
                q.close()



def test_pipelined_requests_in_odd_chunks_answered_in_order(broker):
    """Many clients sharing the epoll set, each pipelining requests cut at
    arbitrary byte boundaries, the chunks of all clients interleaved: every
    reply comes back, in order, and the leases all go."""
    stream = HELLO + ACQ + P.frame(P.PING) + ACQ + P.frame(P.STATS)
    expect = [op | P.REPLY for op in (P.HELLO, P.ACQUIRE_PROGRAM, P.PING, P.ACQUIRE_PROGRAM, P.STATS)]
    for chunk in (1, 7, 97, len(stream)):
        socks = [raw_connect(broker.socket) for _ in range(12)]
        try:
            for k in range(0, len(stream), chunk):
                for s in socks:
                    s.sendall(stream[k:k + chunk])
            for s in socks:
                ops, leases = [], []
                for _ in expect:
                    op, payload = reply(s)
                    ops.append(op)
                    if op == P.ACQUIRE_PROGRAM | P.REPLY:
                        leases.append(struct.unpack_from("<Q", payload, 136)[0])
                assert ops == expect
                # releases pipelined in one write: the RELEASE fast path, queued
                s.sendall(b"".join(P.frame(P.RELEASE, b"lease=%d\0" % lid) for lid in leases))
                for _ in leases:
                    assert reply(s)[0] == P.RELEASE | P.REPLY
        finally:
            for s in socks:
                s.close()
    st = broker.stats()
    assert st["totals"]["refs"] == 0 and st["totals"]["consistent"]


def test_release_fast_path_refuses_what_it_must(broker):
    """RELEASE lease=N skips key=value parsing but not the checks: another
    connection's lease, an unknown lease and a bad number are errors; the
    lease stays held."""
    a, b = raw_connect(broker.socket), raw_connect(broker.socket)
    try:
        for s in (a, b):
            s.sendall(HELLO)
            reply(s)
        a.sendall(ACQ)
        lid = struct.unpack_from("<Q", reply(a)[1], 136)[0]
        for payload, what in ((b"lease=%d\0" % lid, "not held by this connection"),
                              (b"lease=%d\0" % (lid + 1000), "not held by this connection"),
                              (b"lease=12x\0", "not a number")):
            b.sendall(P.frame(P.RELEASE, payload))
            op, msg = P.recv_frame(b)
            assert op == P.ERROR and what in msg.decode(), msg
        assert broker.stats()["totals"]["refs"] > 0
        a.sendall(P.frame(P.RELEASE, b"lease=%d\0" % lid))
        assert reply(a)[0] == P.RELEASE | P.REPLY
        assert broker.stats()["totals"]["refs"] == 0
    finally:
        a.close()
        b.close()


def _sched(tid):
    with open(f"/proc/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[16]), int(fields[38])        # nice, policy


def _threads(pid):
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.parametrize("priority", ["normal", "high", "batch"])
def test_priority_option(tmp_path, priority):
    """The request path runs as asked; a build runs in a worker thread at
    SCHED_BATCH and the starting nice value, whatever the option."""
    if priority == "high" and os.geteuid() != 0:
        pytest.skip("nice -5 needs root")
    b = BrokerProc(tmp_path / "b", extra=("--priority", priority)).start()
    try:
        pid = b.proc.pid
        base = os.getpriority(os.PRIO_PROCESS, 0)
        expect = {"normal": (base, os.SCHED_OTHER), "high": (min(base, -5), os.SCHED_OTHER),
                  "batch": (base, os.SCHED_BATCH)}[priority]
        # the socket answers (listen) before the event loop sets its priority
        deadline = time.monotonic() + 10
        while _sched(pid) != expect and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _sched(pid) == expect
        with b.connect() as c:
            c.acquire_program("/usr/bin/xz")       # a build: the worker thread exists now
        # every other thread (the build worker, the fast door's acceptor) is
        # SCHED_BATCH; the build worker also at the starting nice value
        others = wait_for(lambda: [_sched(t) for t in _threads(pid) if t != pid], what="a worker thread")
        assert all(policy == os.SCHED_BATCH for _nice, policy in others), others
        assert (base, os.SCHED_BATCH) in others
    finally:
        b.cleanup()
