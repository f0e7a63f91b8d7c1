"""The fast door (`<socket>.fast`, host_broker/fastdoor.py) served by the
native table in a thread of its own (_native/leasetable_door.pxi): a
starting program's HELLO + cached ACQUIRE_PROGRAM answered, and its end
seen, with no Python connection; anything else adopted by connection.py in
order.  Each test checks through STATS (`hot_answered`, `hot_handed`, the
client list) which side answered, so none passes on the Python path alone."""
import array
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

from broker_helpers import broker, raw_connect, reply, wait_for  # noqa: F401  (broker is a fixture)
from loader import protocol as P

XZ = "/usr/bin/xz"
LEASE_OFF = 136


def _hello(name="door", **extra):
    return P.frame(P.HELLO, P.encode_kv({"proto": 1, "kind": "process", "pid": os.getpid(), "name": name,
                                         **extra}))


def _acq(path=XZ):
    return P.frame(P.ACQUIRE_PROGRAM, P.encode_kv({"path": path, "argv0": path, "cwd": "/"}))


def _recv_fd(s):
    """The HELLO reply and the descriptor riding on it."""
    hdr, anc, _flags, _ = s.recvmsg(8, socket.CMSG_SPACE(4))
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:4])
    length, op = struct.unpack("<II", hdr)
    body = b""
    while len(body) < length:
        body += s.recv(length - len(body))
    return op, body, (fds[0] if fds else None)


def _warm(b, path=XZ):
    """One grant through Python registers the native entry."""
    with raw_connect(b.socket) as s:
        s.sendall(_hello("warm") + _acq(path))
        _recv_fd(s)
        assert reply(s)[0] == P.ACQUIRE_PROGRAM | P.REPLY


def _totals(b):
    return b.stats()["totals"]


def _settled(b):
    """Counts back to zero once every door client is gone."""
    def done():
        t = _totals(b)
        return t["refs"] == 0 and t["leases"] == 0 and t["consistent"] and t["clients"] == 1
    wait_for(done, what="reference counts back to zero")


def test_door_answers_hello_and_cached_acquire_natively(broker):
    _warm(broker)
    watcher = broker.connect(name="stats")     # one connection: each STATS is one handed request
    t0 = watcher.stats()["totals"]
    s = raw_connect(broker.socket + ".fast")
    s.sendall(_hello("doorprog") + _acq())
    op, body, fd = _recv_fd(s)
    assert op == P.HELLO | P.REPLY and P.Request.decode(body).int("proto") == 1
    assert fd is not None
    try:   # the pool descriptor is read-only, as the Python path sends it
        assert os.get_blocking(fd) is not None and (os.stat(fd).st_size > 0)
        import fcntl
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    finally:
        os.close(fd)
    op, plan = reply(s)
    assert op == P.ACQUIRE_PROGRAM | P.REPLY
    lease = struct.unpack_from("<Q", plan, LEASE_OFF)[0]
    st = watcher.stats()
    watcher.close()
    t = st["totals"]
    assert t["hot_answered"] >= t0["hot_answered"] + 1 and t["hot_handed"] == t0["hot_handed"] + 1
    assert t["door_accepted"] == t0["door_accepted"] + 1 and t["door_adopted"] == t0["door_adopted"]
    me = [c for c in st["clients"] if c["name"] == "doorprog"]
    assert me and me[0]["kind"] == "process" and me[0]["pid"] == os.getpid()
    assert me[0]["lease_ids"] == [lease] and t["refs"] == t["images"] and t["consistent"]
    s.close()
    _settled(broker)
    wait_for(lambda: f"doorprog) gone, 1 leases released" in broker.log(), what="the log line")


def test_door_hands_other_requests_to_python_in_order(broker):
    """After the native HELLO + ACQUIRE, a PING is still answered natively,
    then STATS (Python) and a RELEASE of the native lease come back in
    order, and the client stays one client with its lease."""
    _warm(broker)
    h0 = _totals(broker)["hot_handed"]
    with raw_connect(broker.socket + ".fast") as s:
        s.sendall(_hello("adopted") + _acq())
        _op, _body, fd = _recv_fd(s)
        os.close(fd)
        lease = struct.unpack_from("<Q", reply(s)[1], LEASE_OFF)[0]
        s.sendall(P.frame(P.PING, b"") + P.frame(P.STATS, b"") + P.frame(P.RELEASE, b"lease=%d\0" % lease)
                  + P.frame(P.PING, b""))
        assert reply(s)[0] == P.PING | P.REPLY
        op, body = reply(s)
        assert op == P.STATS | P.REPLY
        import json
        mine = [c for c in json.loads(body)["clients"] if c["name"] == "adopted"]
        assert len(mine) == 1 and mine[0]["lease_ids"] == [lease]
        assert reply(s)[0] == P.RELEASE | P.REPLY
        assert reply(s)[0] == P.PING | P.REPLY
        t = _totals(broker)
        assert t["hot_handed"] > h0 and t["refs"] == 0 and t["consistent"]
        assert t["door_adopted"] == 1 and t["door_accepted"] == 1
        # a second acquire on the adopted connection: the Python side's hot path
        s.sendall(_acq())
        assert reply(s)[0] == P.ACQUIRE_PROGRAM | P.REPLY
        assert _totals(broker)["refs"] > 0
    _settled(broker)


def test_door_leaves_what_it_does_not_take_to_python(broker):
    """A HELLO the door does not take (a guest, another protocol version, a
    long name) and an acquire it has no entry for go to Python, which
    answers or refuses them exactly as on the main socket."""
    _warm(broker)
    with raw_connect(broker.socket + ".fast") as s:
        s.sendall(P.frame(P.HELLO, P.encode_kv({"proto": 2, "kind": "process"})))
        op, payload = P.recv_frame(s)
        assert op == P.ERROR and b"protocol version" in payload
    with raw_connect(broker.socket + ".fast") as s:
        s.sendall(_hello("x" * 100) + _acq("/usr/bin/gzip"))      # a build, through Python
        _op, _body, fd = _recv_fd(s)
        os.close(fd)
        op, plan = reply(s)
        assert op == P.ACQUIRE_PROGRAM | P.REPLY
        st = broker.stats()
        assert [c for c in st["clients"] if c["name"] == "x" * 64]
        assert st["totals"]["door_adopted"] == 2 == st["totals"]["door_accepted"]
    _settled(broker)


def test_door_many_concurrent_and_killed_clients(broker, tmp_path):
    """200 door clients from 8 threads, plus 20 processes killed with
    SIGKILL after their announcement: every reference comes back."""
    _warm(broker)
    errors = []

    def run(n):
        try:
            for _ in range(n):
                with raw_connect(broker.socket + ".fast") as s:
                    s.sendall(_hello("many") + _acq())
                    _op, _b, fd = _recv_fd(s)
                    os.close(fd)
                    reply(s)
        except Exception as e:      # reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    code = ("import os, socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(bytes.fromhex(sys.argv[2])); print('sent', flush=True); time.sleep(60)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, broker.socket + ".fast",
                               (_hello("killed") + _acq()).hex()], stdout=subprocess.PIPE)
             for _ in range(20)]
    for p in procs:
        assert p.stdout.readline().strip() == b"sent"
    wait_for(lambda: sum(c["name"] == "killed" and c["leases"] == 1 for c in broker.stats()["clients"]) == 20,
             what="the killed clients' leases")
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    for t in threads:
        t.join()
    assert not errors, errors
    _settled(broker)
    t = _totals(broker)
    assert t["door_accepted"] == 220 and t["door_adopted"] == 0


def test_door_does_not_rebuild_for_a_changed_file(broker, tmp_path):
    """The door's clients map their plan cache file, which the launcher
    checks against the files itself: a program changed on disk since is the
    launcher's to notice (tests/test_fastpath.py), and the door answers from
    the entry (no stat, no plan rebuilt for a client that would not use it),
    while the main socket's clients, who map the reply, get a fresh plan."""
    prog = str(tmp_path / "xz")
    with open(XZ, "rb") as src, open(prog, "wb") as dst:
        dst.write(src.read())
    os.chmod(prog, 0o755)
    _warm(broker, prog)
    os.utime(prog, ns=(1, 1))                     # changed since the plan was made
    with raw_connect(broker.socket + ".fast") as s:
        s.sendall(_hello("changed") + _acq(prog))
        _op, _b, fd = _recv_fd(s)
        os.close(fd)
        assert reply(s)[0] == P.ACQUIRE_PROGRAM | P.REPLY
        t = _totals(broker)
        assert t["door_adopted"] == 0 and t["door_accepted"] == 1
    with raw_connect(broker.socket) as s:
        s.sendall(_hello("main") + _acq(prog))
        _recv_fd(s)
        assert reply(s)[0] == P.ACQUIRE_PROGRAM | P.REPLY
    _settled(broker)
