"""The broker as a service: a real `ldpool broker` process on a private
socket and pool, real client connections (loader.client and raw sockets)."""
import fcntl
import json
import mmap
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from broker_helpers import BrokerProc, answering, image_refs, others, wait_for
from loader import client as C
from loader import protocol as P
from loader.errors import BrokerError
from loader.stubs import StubRegion

STUB_BYTES = StubRegion(0, 0).size              # the epoch's stub region, in the pool


@pytest.fixture
def broker(tmp_path):
    b = BrokerProc(tmp_path / "b", linger=0.5).start()
    yield b
    b.cleanup()


def raw(broker, hello=True):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(broker.socket)
    if hello:
        P.send_frame(s, P.HELLO, P.encode_kv({"proto": 1, "kind": "guest", "name": "raw"}))
        assert P.recv_frame(s)[0] == P.HELLO | P.REPLY
    return s


def test_socket_permissions_and_peer_log(broker):
    assert os.stat(broker.socket).st_mode & 0o777 == 0o600
    with broker.connect(name="permcheck"):
        pass
    wait_for(lambda: f"uid {os.getuid()} gid {os.getgid()} permcheck" in broker.log(), what="peer log")
    assert f"pid {os.getpid()}" in broker.log()      # SO_PEERCRED


def test_hello_gives_a_readonly_pool_fd(broker):
    with broker.connect() as c:
        assert c.pool_fd is not None and c.pool_size == 256 << 20
        assert fcntl.fcntl(c.pool_fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(PermissionError):
            mmap.mmap(c.pool_fd, c.pool_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m = mmap.mmap(c.pool_fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
        magic, _v, _h, size, epoch = struct.unpack_from("<8sIIQQ", m, 0)
        assert (magic, size, epoch) == (b"LDPPOOL1", c.pool_size, c.epoch)
        m.close()
    # a guest gets no descriptor: it will see the pool as ivshmem BAR2
    with broker.connect(kind="guest", name="vm1") as g:
        assert g.pool_fd is None and int(g.info["pool_size"]) == 256 << 20


def test_acquire_refcount_release(broker):
    with broker.connect() as c:
        plan = c.acquire_program("/usr/bin/xz")
        lease = C.plan_lease(plan)
        objs = C.plan_objects(plan)
        assert len(objs) >= 2                    # xz and liblzma at least
        st = broker.stats()
        starts = {im["map_start"]: im for im in st["images"]}
        for _l_addr, start, end in objs:
            im = starts[hex(start)]
            assert im["refs"] == 1 and int(im["map_start"], 16) + im["va_size"] == end
            lo, hi = int(st["window"], 16), int(st["window"], 16) + int(st["window_size"], 16)
            assert lo <= start < end <= hi
        # the same program again: one more reference each, same placements
        plan2 = c.acquire_program("/usr/bin/xz")
        assert C.plan_objects(plan2) == objs and C.plan_lease(plan2) != lease
        assert set(image_refs(broker.stats()).values()) == {2}
        c.release(lease)
        assert set(image_refs(broker.stats()).values()) == {1}
        with pytest.raises(BrokerError, match="not held by this connection"):
            c.release(lease)
    # connection closed: everything released, then evicted after the linger
    wait_for(lambda: broker.stats()["totals"]["refs"] == 0, what="release on close")
    wait_for(lambda: not broker.stats()["images"], what="eviction after linger")
    st = broker.stats()
    assert st["pool_used"] == STUB_BYTES          # only the epoch's stub region is left


def test_identical_files_share_one_image_and_versions_coexist(broker, tmp_path):
    """Images are keyed by content: copies at different paths share one,
    a different version of the same name gets its own."""
    tmp_path = tmp_path / "progs"
    for d in ("a", "b", "c"):
        os.makedirs(tmp_path / d)
        shutil.copy("/usr/bin/gzip", tmp_path / d / "gzip")
    with open(tmp_path / "c" / "gzip", "ab") as f:
        f.write(b"\0another version")
    with broker.connect() as c:
        starts = {d: C.plan_objects(c.acquire_program(str(tmp_path / d / "gzip")))[0][1]
                  for d in ("a", "b", "c")}
        assert starts["a"] == starts["b"] != starts["c"]
        st = broker.stats()
        by_start = {int(im["map_start"], 16): im for im in st["images"]}
        assert by_start[starts["a"]]["refs"] == 2 and by_start[starts["c"]]["refs"] == 1
        assert by_start[starts["a"]]["key"] != by_start[starts["c"]]["key"]
        assert len(st["images"]) == 2


def test_framing_from_a_byte_stream(broker):
    s = raw(broker)
    # three pipelined requests delivered one byte at a time
    data = P.frame(P.PING) + P.frame(P.STATS) + P.frame(P.PING)
    for i in range(len(data)):
        s.send(data[i:i + 1])
    assert P.recv_frame(s) == (P.PING | P.REPLY, b"")
    op, body = P.recv_frame(s)
    assert op == P.STATS | P.REPLY and json.loads(body)["proto"] == 1
    assert P.recv_frame(s) == (P.PING | P.REPLY, b"")
    s.close()


def test_protocol_errors(broker):
    s = raw(broker, hello=False)
    P.send_frame(s, P.PING)
    op, body = P.recv_frame(s)
    assert op == P.ERROR and b"first request must be HELLO" in body
    P.send_frame(s, P.HELLO, P.encode_kv({"proto": 2, "kind": "process"}))
    op, body = P.recv_frame(s)
    assert op == P.ERROR and b"protocol version 2 not supported" in body
    P.send_frame(s, P.HELLO, b"proto=1\0kind=guest")          # not NUL-terminated
    assert P.recv_frame(s)[0] == P.ERROR
    P.send_frame(s, P.HELLO, P.encode_kv({"proto": 1, "kind": "guest"}))
    assert P.recv_frame(s)[0] == P.HELLO | P.REPLY
    for payload, msg in [({"path": "relative/prog"}, b"absolute path"),
                         ({"path": "/nonexistent/prog"}, b"/nonexistent/prog"),
                         ({"path": "/etc/passwd"}, b"/etc/passwd")]:
        P.send_frame(s, P.ACQUIRE_PROGRAM, P.encode_kv(payload))
        op, body = P.recv_frame(s)
        assert op == P.ERROR and msg in body and b"\n" not in body and b"Traceback" not in body
    P.send_frame(s, P.RELEASE, P.encode_kv({"lease": 12345}))
    assert P.recv_frame(s)[0] == P.ERROR
    P.send_frame(s, P.PING)                        # still usable after error replies
    assert P.recv_frame(s)[0] == P.PING | P.REPLY
    s.sendall(struct.pack("<II", 0, 0x77))         # unknown op: error, then closed
    op, body = P.recv_frame(s)
    assert op == P.ERROR and b"unknown op" in body
    assert s.recv(1) == b""
    s.close()
    s = raw(broker)
    s.sendall(struct.pack("<II", (64 << 20) + 1, P.PING))     # oversized frame
    op, body = P.recv_frame(s)
    assert op == P.ERROR and b"64 MiB" in body
    assert s.recv(1) == b""
    s.close()
    assert answering(broker.socket)


def test_sixteen_concurrent_clients(broker):
    """16 real client processes acquire and release concurrently; counts are
    exact while they hold leases and zero once they are gone."""
    code = (
        "import sys, time; from loader import client as C\n"
        "c = C.connect(sys.argv[1], name='worker')\n"
        "progs = sys.argv[2:]\n"
        "for i in range(20):\n"
        "    l = C.plan_lease(c.acquire_program(progs[i % len(progs)])); c.release(l)\n"
        "for p in progs: c.acquire_program(p)\n"
        "print('held', flush=True); sys.stdin.read()\n")
    progs = ["/usr/bin/xz", "/usr/bin/gzip", "/usr/bin/zstd"]
    procs = [subprocess.Popen([sys.executable, "-c", code, broker.socket, *progs],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(16)]
    try:
        for p in procs:
            assert p.stdout.readline() == "held\n"
        st = broker.stats()
        workers = [c for c in others(st) if c["name"] == "worker"]
        assert len(workers) == 16 and all(c["leases"] == 3 for c in workers)
        # expected refs: 16 x (one per program using the image)
        with broker.connect() as c:
            per_prog = [{o[1] for o in C.plan_objects(c.acquire_program(p))} for p in progs]
        expect = {}
        for starts in per_prog:
            for s in starts:
                expect[hex(s)] = expect.get(hex(s), 0) + 16
        got = {im["map_start"]: im["refs"] for im in st["images"]}
        assert got == expect
    finally:
        for p in procs:
            p.kill()
            p.wait()
    wait_for(lambda: broker.stats()["totals"]["refs"] == 0, what="all released")


def test_stats_do_not_leak_other_users_programs(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another user")
    import tempfile
    top = tempfile.mkdtemp(prefix="ldpool-test-", dir="/tmp")    # pytest's tmp is 0700
    os.chmod(top, 0o711)
    d = os.path.join(top, "shared")
    b = BrokerProc(d, linger=60, extra=["--group", "nogroup"]).start()
    try:
        os.chmod(d, 0o711)
        assert os.stat(b.socket).st_mode & 0o777 == 0o660
        with b.connect() as c:
            c.acquire_program("/usr/bin/zstd")        # root's program
            # everything imported before dropping root (the interpreter may
            # live where nobody cannot read)
            code = ("import os, sys, json, encodings.idna; from loader import client as C\n"
                    "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                    "c = C.connect(sys.argv[1], name='nobody')\n"
                    "c.acquire_program('/usr/bin/xz')\n"
                    "try:\n"
                    "    c.acquire_program(sys.argv[2]); secret = True\n"
                    "except Exception as e:\n"
                    "    secret = str(e)\n"
                    "try:\n"
                    "    os.open('/dev/shm' + c.pool_name, os.O_RDONLY); opened = True\n"
                    "except PermissionError:\n"
                    "    opened = False\n"
                    "s = c.stats(); s['opened_pool_file'] = opened; s['secret'] = secret\n"
                    "print(json.dumps(s))\n")
            secret = os.path.join(top, "secret-gzip")       # a program only root may read
            shutil.copy("/usr/bin/gzip", secret)
            os.chmod(secret, 0o700)
            with open(secret, "ab") as f:
                f.write(b"\0root only")
            out = subprocess.run([sys.executable, "-c", code, b.socket, secret], capture_output=True,
                                 text=True, timeout=60, cwd="/")
            assert out.returncode == 0, out.stderr
            seen = json.loads(out.stdout)
            paths = {im["path"] for im in seen["images"]}
            assert any(p.endswith("/xz") for p in paths)
            assert not any("zstd" in p for p in paths)        # root's program stays hidden
            assert seen["totals"]["hidden_images"] >= 2
            assert [cl["name"] for cl in seen["clients"]] == ["nobody"]
            assert not seen["opened_pool_file"]       # only the read-only fd from HELLO
            # the broker could read it, but a group broker must not pool it
            assert "not readable by everyone" in seen["secret"]
            assert not any("secret" in im["path"] for im in c.stats()["images"])
            mine = {im["path"] for im in c.stats()["images"]}
            assert any("zstd" in p for p in mine)         # the broker's own uid sees all
    finally:
        b.cleanup()
        shutil.rmtree(top, ignore_errors=True)


def test_linger_then_space_reused(tmp_path):
    b = BrokerProc(tmp_path / "l", linger=1.0).start()
    try:
        with b.connect() as c:
            c.release(C.plan_lease(c.acquire_program("/usr/bin/gzip")))
            im = b.stats()["images"][0]
            assert im["state"] == "lingering" and im["refs"] == 0
            # within the linger delay it is reused as is
            again = c.acquire_program("/usr/bin/gzip")
            assert hex(C.plan_objects(again)[0][1]) == im["map_start"]
            c.release(C.plan_lease(again))
        wait_for(lambda: not b.stats()["images"], what="eviction")
        assert "evicted /usr/bin/gzip" in b.log()
        with b.connect() as c:
            c.acquire_program("/usr/bin/xz")
            offs = sorted(i["pool_off"] for i in c.stats()["images"])
            assert offs[0] == im["pool_off"]             # the freed pool space is reused
    finally:
        b.cleanup()


def test_cli_errors_are_one_line(tmp_path, ldpool_bin):
    r = subprocess.run([ldpool_bin, "broker", "--socket", str(tmp_path / "s"), "--pool-size", "3M"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "power of two" in r.stderr
    env = dict(os.environ, LDPOOL_SOCKET=str(tmp_path / "none.sock"))
    r = subprocess.run([ldpool_bin, "pool"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot reach the broker" in r.stderr
    assert "Traceback" not in r.stderr


def test_second_broker_on_same_socket_refused(broker, ldpool_bin):
    r = subprocess.run([ldpool_bin, "broker", "--socket", broker.socket, "--pool", broker.pool],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "already serving" in r.stderr
    assert answering(broker.socket)


def test_pool_report(broker, ldpool_bin):
    with broker.connect() as c:
        c.acquire_program("/usr/bin/xz")
        env = dict(os.environ, LDPOOL_SOCKET=broker.socket, COLUMNS="200")
        r = subprocess.run([ldpool_bin, "pool"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "/usr/bin/xz" in r.stdout and "liblzma" in r.stdout and "saved" in r.stdout
        r = subprocess.run([ldpool_bin, "pool", "--json"], capture_output=True, text=True, env=env,
                           timeout=60)
        st = json.loads(r.stdout)
        assert st["totals"]["refs"] == len(st["images"]) and st["pool"] == broker.pool


def test_embedded_broker_starts_and_exits_when_idle(tmp_path):
    sock = str(tmp_path / "emb" / "broker.sock")
    os.makedirs(os.path.dirname(sock), mode=0o700)
    C.ensure_broker(sock, idle_exit=1)
    pool = P.default_pool_name(sock)
    try:
        c = C.connect(sock, start_embedded=True)
        pid = int(c.info["broker_pid"])
        assert c.pool_name == pool
        c.release(C.plan_lease(c.acquire_program("/usr/bin/gzip")))    # lingers 120 s...
        c.close()
        # a second start is a no-op while it answers
        C.ensure_broker(sock, idle_exit=1)
        wait_for(lambda: not answering(sock), timeout=20, what="idle exit")
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10, what="broker exit")
        log = open(os.path.join(os.path.dirname(sock), "broker.log")).read()
        assert "idle for 1s: exiting" in log
        # nobody left: its images are gone and the empty pool with them
        assert f"pool {pool} empty: removed" in log
        assert not os.path.exists("/dev/shm" + pool)
        assert not os.path.exists(os.path.join(os.path.dirname(sock), pool.strip("/") + ".journal"))
        # connect(start_embedded=True) brings it back
        with C.connect(sock, start_embedded=True) as c2:
            assert int(c2.info["broker_pid"]) != pid
            os.kill(int(c2.info["broker_pid"]), signal.SIGTERM)
    finally:
        import posix_ipc
        try:
            posix_ipc.unlink_shared_memory(pool)
        except posix_ipc.ExistentialError:
            pass


def test_dlopen_joins_the_lease_and_dlclose_releases(broker, tmp_path):
    with broker.connect() as c:
        plan = c.acquire_program("/usr/bin/gzip")
        lease = C.plan_lease(plan)
        n0 = len(C.plan_objects(plan))
        pz = c.acquire_library(lease, "libz.so.1", requester="/usr/bin/gzip", flags=2)
        assert C.plan_lease(pz) == lease
        hdr = struct.unpack_from("<8sII IIII II II", pz, 0)
        assert hdr[10] == n0                                   # first_index
        (z,) = C.plan_objects(pz)
        # dlopen of something the lease holds: an empty plan
        again = c.acquire_library(lease, "libz.so.1", requester="/usr/bin/gzip", flags=2)
        assert C.plan_objects(again) == []
        st = broker.stats()
        zim = next(im for im in st["images"] if im["map_start"] == hex(z[1]))
        assert zim["path"].endswith("libz.so.1") or "libz.so" in zim["path"]
        assert zim["refs"] == 1
        # a missing library is a one-line error, and the lease is untouched
        with pytest.raises(BrokerError, match="libnope"):
            c.acquire_library(lease, "libnope.so.9", requester="/usr/bin/gzip")
        c.release(lease, objects=[n0])                         # dlclose(libz)
        st = broker.stats()
        assert next(im for im in st["images"] if im["map_start"] == hex(z[1]))["refs"] == 0
        assert st["totals"]["leases"] == 1
        # another connection cannot touch this lease
        with broker.connect() as other:
            with pytest.raises(BrokerError, match="not held by this connection"):
                other.acquire_library(lease, "libz.so.1")


def test_full_pool_evicts_unused_images_early(tmp_path):
    b = BrokerProc(tmp_path / "full", linger=600, pool_size="2M").start()
    try:
        with b.connect() as c:
            held = c.acquire_program("/usr/bin/xz")
            for prog in ("/usr/bin/gzip", "/usr/bin/zstd", "/usr/bin/gzip", "/usr/bin/zstd"):
                c.release(C.plan_lease(c.acquire_program(prog)))
            assert "pool full: evicted" in b.log()
            # what a lease holds is never evicted, however full the pool
            starts = {o[1] for o in C.plan_objects(held)}
            live = {int(im["map_start"], 16) for im in c.stats()["images"]}
            assert starts <= live
            with pytest.raises(BrokerError, match="pool .* is full"):
                c.acquire_program("/usr/bin/sqlite3")
            c.ping()
    finally:
        b.cleanup()


from hypothesis import given, settings, strategies as hst  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(hst.lists(hst.tuples(hst.integers(1, 0x1FF), hst.binary(max_size=300)), max_size=8),
       hst.lists(hst.integers(1, 64), min_size=1, max_size=40))
def test_frames_reassemble_from_any_chunking(frames, cuts):
    stream = b"".join(P.frame(op, body) for op, body in frames)
    dec, got, pos, i = P.FrameDecoder(), [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        got += dec.feed(stream[pos:pos + n])
        pos, i = pos + n, i + 1
    assert got == frames and dec.pending == 0


@given(hst.lists(hst.tuples(hst.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                            hst.binary(max_size=40).filter(lambda b: b"\0" not in b)), max_size=10))
def test_key_values_roundtrip(pairs):
    req = P.Request.decode(P.encode_kv(pairs))
    assert req.pairs == [(k, v) for k, v in pairs]


def test_one_broker_per_pool(broker, tmp_path, ldpool_bin):
    """A second broker on another socket but the same pool must not clobber it."""
    r = subprocess.run([ldpool_bin, "broker", "--socket", str(tmp_path / "other.sock"),
                        "--pool", broker.pool], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "in use by another broker" in r.stderr
    assert r.stderr.count("\n") == 1
    with broker.connect() as c:
        c.acquire_program("/usr/bin/gzip")


def _rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def test_client_that_never_reads_is_not_read_either(broker):
    """Back-pressure: a client pipelining requests without reading replies
    costs the broker a bounded buffer, and everyone else is still served."""
    with broker.connect() as c:
        c.acquire_program("/usr/bin/xz")            # a cached plan of ~7 KB
    s = raw(broker)
    s.setblocking(False)
    req = P.frame(P.ACQUIRE_PROGRAM, P.encode_kv({"path": "/usr/bin/xz", "argv0": "xz", "cwd": "/"}))
    before = _rss_kib(broker.proc.pid)
    batch, sent = req * 500, 0
    try:
        while sent < 100_000:
            sent += s.send(batch) // len(req)
    except BlockingIOError:
        pass
    time.sleep(3)
    grown = _rss_kib(broker.proc.pid) - before
    # without back-pressure it would drain the ~3,000 queued requests and
    # buffer ~20 MB of replies
    assert grown < 8 << 10, f"broker grew by {grown} KiB after {sent} requests"
    with broker.connect() as c:
        c.ping()
        c.acquire_program("/usr/bin/gzip")
    s.close()
