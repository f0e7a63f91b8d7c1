"""dlopen through the broker: plans cached per program, object set and
request; reclaimed leases (after a broker restart) can dlopen again; the
start-up request pair answered in one reply send."""
import os
import re
import signal
import socket
import struct
import subprocess
import textwrap
import time

import pytest

from loader import protocol as P
from loader.client import plan_lease
from broker_helpers import broker, stop_and_unlink  # noqa: F401  (broker is a fixture)
from launcher_helpers import env  # noqa: F401  (a fixture)

LEASE_OFF = 136        # struct ldp_plan_hdr: the lease is its last field
NOBJ_OFF = 16


def _nobj(plan):
    return struct.unpack_from("<I", plan, NOBJ_OFF)[0]


def _without_lease(plan):
    return plan[:LEASE_OFF] + plan[LEASE_OFF + 8:]


def _totals(broker):
    return broker.stats()["totals"]


def test_dlopen_plans_are_cached_per_object_set(broker):
    with broker.connect() as a, broker.connect() as b:
        la = plan_lease(a.acquire_program("/usr/bin/xz"))
        lb = plan_lease(b.acquire_program("/usr/bin/xz"))
        pa = a.acquire_library(la, "libz.so.1")
        assert _nobj(pa) >= 1
        t = _totals(broker)
        assert (t["dlopen_built"], t["dlopen_cached"]) == (1, 0)
        # another process of the same program, same objects, same request: a lookup
        pb = b.acquire_library(lb, "libz.so.1")
        assert _without_lease(pb) == _without_lease(pa) and pb[LEASE_OFF:LEASE_OFF + 8] != pa[LEASE_OFF:LEASE_OFF + 8]
        t = _totals(broker)
        assert (t["dlopen_built"], t["dlopen_cached"]) == (1, 1) and t["consistent"]
        # the lease went past its resolution through the cache: a new dlopen
        # resolves it again (program, then libz) and numbers objects after it
        pb2 = b.acquire_library(lb, "libbz2.so.1.0")
        pa2 = a.acquire_library(la, "libbz2.so.1.0")
        assert _nobj(pb2) >= 1 and _without_lease(pa2) == _without_lease(pb2)
        # already held: an empty plan, from the cache the second time
        assert _nobj(b.acquire_library(lb, "libz.so.1")) == 0
        assert _nobj(a.acquire_library(la, "libz.so.1")) == 0
        t = _totals(broker)
        assert (t["dlopen_built"], t["dlopen_cached"]) == (3, 3) and t["consistent"]
        # a different object set (no libz first) is another cache entry
        lc = plan_lease(a.acquire_program("/usr/bin/xz"))
        pc = a.acquire_library(lc, "libbz2.so.1.0")
        assert _nobj(pc) >= 1 and _totals(broker)["dlopen_built"] == 4
        # a missing library stays an error, and leaves the lease usable
        with pytest.raises(Exception, match="libnothere.so"):
            a.acquire_library(lc, "libnothere.so")
        assert _nobj(a.acquire_library(lc, "libz.so.1")) >= 1


def _raw_reclaim(sock, lease, epoch, addrs, program=None):
    kv = [("lease", lease), ("epoch", epoch)] + [("addr", hex(x)) for x in addrs]
    if program:
        kv += [("path", program), ("argv0", program), ("cwd", "/")]
    P.send_frame(sock, P.RECLAIM, P.encode_kv(kv))
    return P.recv_frame(sock)


def _object_starts(plan):
    """map_start of every object of a plan (struct ldp_obj: base, map_start, ...)."""
    nobj = _nobj(plan)
    objs_off, seg_off = struct.unpack_from("<QQ", plan, 48)
    size = (seg_off - objs_off) // nobj
    return [struct.unpack_from("<Q", plan, objs_off + i * size + 8)[0] for i in range(nobj)]


def test_reclaimed_lease_can_dlopen(broker):
    with broker.connect() as c:
        plan = c.acquire_program("/usr/bin/xz")
        lease = plan_lease(plan)
        lib = c.acquire_library(lease, "libz.so.1")
        addrs = _object_starts(plan) + _object_starts(lib)
        epoch = c.epoch
        broker.kill()                       # SIGKILL: the next broker re-attaches
    broker.start()
    for program in (None, "/usr/bin/xz"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(broker.socket)
        P.send_frame(s, P.HELLO, P.encode_kv([("proto", 1), ("kind", "guest")]))
        assert P.recv_frame(s)[0] == P.HELLO | P.REPLY
        op, body = _raw_reclaim(s, lease, epoch, addrs, program)
        assert op == P.RECLAIM | P.REPLY, body
        P.send_frame(s, P.ACQUIRE_LIBRARY, P.encode_kv([("lease", lease), ("name", "libbz2.so.1.0")]))
        op, body = P.recv_frame(s)
        if program is None:
            # without its program the broker cannot resolve the lease again
            assert op == P.ERROR and b"not supported" in body
        else:
            assert op == P.ACQUIRE_LIBRARY | P.REPLY, body
            assert _nobj(body) >= 1
            assert struct.unpack_from("<I", body, 44)[0] == len(addrs)     # first_index
            # what it held before the restart is held, not loaded again
            P.send_frame(s, P.ACQUIRE_LIBRARY, P.encode_kv([("lease", lease), ("name", "libz.so.1")]))
            op, body = P.recv_frame(s)
            assert op == P.ACQUIRE_LIBRARY | P.REPLY and _nobj(body) == 0, body
        s.close()
        # the next round reclaims the same lease id: wait until this one is released
        deadline = time.monotonic() + 20
        while _totals(broker)["leases"] and time.monotonic() < deadline:
            time.sleep(0.02)
    assert _totals(broker)["consistent"]


def test_launcher_dlopen_after_restart_comes_from_the_pool(env, tmp_path):
    """A broker killed under a running program: the program does not notice
    (no SIGPIPE either); its next dlopen starts a broker again, RECLAIMs its
    lease (which carries its program) and is served from the pool (no ld.so
    notice)."""
    from launcher_helpers import SOCKDIR
    sockdir = f"{SOCKDIR}/h9-restart"
    os.makedirs(sockdir, mode=0o700, exist_ok=True)
    e = dict(env, LDPOOL_SOCKET=f"{sockdir}/broker.sock")
    (tmp_path / "plug.c").write_text("int plug(int x) { return x * 3; }\n")
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #include <dlfcn.h>
        #include <stdio.h>
        int main(int argc, char **argv) {
            char line[64];
            printf("ready\\n"); fflush(stdout);
            if (!fgets(line, sizeof line, stdin)) return 2;
            void *h = dlopen(argv[1], RTLD_NOW);
            if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
            printf("plug(14) = %d\\n", ((int (*)(int))dlsym(h, "plug"))(14));
            return 0;
        }
    """))
    subprocess.run(["gcc", "-fPIC", "-shared", "-o", "libplug.so", "plug.c"], check=True, cwd=tmp_path)
    subprocess.run(["gcc", "-o", "main", "main.c"], check=True, cwd=tmp_path)
    p = subprocess.Popen(["ldpool-exec", "--no-fallback", str(tmp_path / "main"), str(tmp_path / "libplug.so")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    try:
        assert p.stdout.readline() == b"ready\n"
        pids = re.findall(rb"serving \S+ \(pid (\d+)", open(f"{sockdir}/broker.log", "rb").read())
        os.kill(int(pids[-1]), signal.SIGKILL)
        time.sleep(0.2)
        out, err = p.communicate(b"go\n", timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    log = open(f"{sockdir}/broker.log", "rb").read()
    stop_and_unlink(f"{sockdir}/broker.sock")
    assert (p.returncode, out, err) == (0, b"plug(14) = 42\n", b"")
    assert re.search(rb"reclaimed lease \d+", log), log[-2000:]


def test_start_up_pair_answered_in_one_send(broker):
    """HELLO and ACQUIRE_PROGRAM sent together come back together: the
    first recv holds both replies (with the pool descriptor)."""
    hello = P.frame(P.HELLO, P.encode_kv([("proto", 1), ("kind", "process"), ("name", "pair")]))
    acq = P.frame(P.ACQUIRE_PROGRAM, P.encode_kv([("path", "/usr/bin/xz"), ("argv0", "xz"), ("cwd", "/")]))
    joined = 0
    for i in range(6):              # the first one puts these request bytes in the cache
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(broker.socket)
        s.sendall(hello + acq)
        time.sleep(0.2)                 # both replies are there by now if sent at all
        data, anc, _f, _a = s.recvmsg(1 << 20, socket.CMSG_SPACE(4))
        fds = [struct.unpack("i", d[:4])[0] for lvl, typ, d in anc if typ == socket.SCM_RIGHTS]
        assert len(fds) == 1
        os.close(fds[0])
        n1 = struct.unpack_from("<I", data)[0]
        assert data[4:8] == struct.pack("<I", P.HELLO | P.REPLY)
        rest = data[8 + n1:]
        if len(rest) >= 8 and struct.unpack_from("<I", rest, 4)[0] == P.ACQUIRE_PROGRAM | P.REPLY:
            joined += i > 0 and len(rest) == 8 + struct.unpack_from("<I", rest)[0]
        s.close()
    # a broker descheduled between its accept and its first read (a busy
    # 2-core CI machine) may see HELLO alone once; never joined is the bug
    assert joined >= 4, joined


@pytest.mark.parametrize("sock", ["/etc/passwd/x/broker.sock", "/proc/1/nothere/broker.sock"])
def test_unusable_socket_directory_is_one_line(sock, ldpool_bin):
    for args in (["broker", "--socket", sock], ["broker", "--detach", "--socket", sock]):
        r = subprocess.run([ldpool_bin, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "broker socket" in r.stderr, r.stderr
    # ldpool-exec starting the embedded broker gets that line back
    r = subprocess.run(["ldpool-exec", "--no-fallback", "/usr/bin/true"], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, LDPOOL_SOCKET=sock))
    assert r.returncode == 127 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_plan_with_missing_symbol_is_one_line(tmp_path):
    (tmp_path / "a.c").write_text("int foo(void) { return 1; }\n")
    (tmp_path / "m.c").write_text("int foo(void); int main(void) { return foo(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", "liba.so", "a.c"], check=True, cwd=tmp_path)
    subprocess.run(["gcc", "-o", "m", "m.c", "-L.", "-la", f"-Wl,-rpath,{tmp_path}"], check=True, cwd=tmp_path)
    (tmp_path / "a.c").write_text("int bar(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", "liba.so", "a.c"], check=True, cwd=tmp_path)
    import sys
    r = subprocess.run([sys.executable, "-P", "-m", "loader.plan", str(tmp_path / "m"), "-o", str(tmp_path / "plan"),
                        "--pool-file", str(tmp_path / "pool")], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, LD_BIND_NOW="1"), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "undefined symbol: foo" in r.stderr, r.stderr
