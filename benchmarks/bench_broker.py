"""Broker benchmarks (pytest-benchmark; run explicitly):

    pytest benchmarks/bench_broker.py --benchmark-enable -s

* acquire/release round trip of a program already in the pool, one client;
* the same with 64 concurrent client processes, p50/p99, both closed loop
  (every client back to back: saturation) and paced (each client starts a
  program every 20 ms on average, i.e. 3,200 acquisitions/s in all);
  issue 4's target: p99 < 1 ms for pooled libraries;
* the kill stress: 10,000 SIGKILLs of 16 concurrent clients with exact
  reference counts at every settle (the test suite runs 1,000).

Clients are separate processes speaking the wire protocol with pre-encoded
frames (as the C launcher does).  Two client kinds: Python (Lean below) and
C (broker_load.c, built with cc: skipped without one).  A Python client
spends ~20 us of CPU per round trip, so 64 of them on 2 cores measure the
clients as much as the broker when back to back; the C clients leave the
CPUs to the broker.  Each 64-client result also gives the broker's own CPU
time per request (`broker_us_per_request`, from /proc schedstat: robust to
other load on the machine, unlike latencies) and the share of requests the
native hot path answered (`native_share`: _native/leasetable.pyx; the rest,
HELLO and each client's first acquire, go through Python)."""
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from broker_helpers import BrokerProc  # noqa: E402

from loader import protocol as P  # noqa: E402

PROGRAM = "/usr/bin/xz"
LEASE_OFF = 136


class Lean:
    """A minimal client: pre-encoded frames, recv_into a fixed buffer."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        # with a timeout, recv waits in poll(): a reader asleep in recv()
        # itself is woken for nothing when the broker reads the request
        # (freeing its buffer wakes the writer's socket's sleepers), which
        # costs the broker a cross-CPU wake-up per request
        self.s.settimeout(600)
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.call(P.frame(P.HELLO, P.encode_kv({"proto": 1, "kind": "guest", "name": "bench"})))
        self.acq = P.frame(P.ACQUIRE_PROGRAM, P.encode_kv(
            {"path": PROGRAM, "argv0": PROGRAM, "cwd": "/"}))

    def call(self, frame):
        self.s.sendall(frame)
        got = 0
        while got < 8:
            got += self.s.recv_into(self.view[got:])
        length, op = struct.unpack_from("<II", self.buf)
        while got < 8 + length:
            got += self.s.recv_into(self.view[got:])
        if op == P.ERROR:
            raise RuntimeError(bytes(self.buf[8:8 + length]).decode())
        return length

    def roundtrip(self):
        self.call(self.acq)
        lease = struct.unpack_from("<Q", self.buf, 8 + LEASE_OFF)[0]
        self.call(P.frame(P.RELEASE, b"lease=%d\0" % lease))


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = BrokerProc(tmp_path_factory.mktemp("bench") / "b", linger=600).start()
    c = Lean(b.socket)
    c.roundtrip()                      # the images are in the pool from now on
    yield b
    b.cleanup()


def test_roundtrip_one_client(benchmark, broker):
    c = Lean(broker.socket)
    benchmark(c.roundtrip)


def _client(path, n, pace, barrier, q, seed):
    c = Lean(path)
    c.roundtrip()
    rnd = random.Random(seed)
    barrier.wait(120)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.roundtrip()
        out.append(time.perf_counter() - t0)
        if pace:
            time.sleep(rnd.expovariate(1 / pace))
    q.put(out)


def broker_cpu(pid):
    """Seconds of CPU the broker's threads ran (ns precision, unlike /proc/PID/stat)."""
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                t += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return t / 1e9


def hot_answered(path):
    """Requests the broker's native hot path has answered so far."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        s.sendall(P.frame(P.HELLO, P.encode_kv({"proto": 1, "kind": "guest", "name": "stats"}))
                  + P.frame(P.STATS))
        P.recv_frame(s)
        op, body = P.recv_frame(s)
        return json.loads(body)["totals"].get("hot_answered", 0)
    finally:
        s.close()


def _summary(lat, nclients, pace, cpu, requests, hot=None):
    lat.sort()

    def pct(f):
        return lat[min(len(lat) - 1, int(f * len(lat)))] * 1e6
    return {"clients": nclients, "samples": len(lat), "pace_ms": pace * 1e3,
            "p50_us": round(pct(0.50)), "p90_us": round(pct(0.90)),
            "p99_us": round(pct(0.99)), "max_us": round(lat[-1] * 1e6),
            "broker_us_per_request": round(cpu / requests * 1e6, 1),
            "native_share": None if hot is None else round(hot / requests, 3)}


def concurrent_latency(path, nclients=64, n=200, pace=0.0, broker_pid=None):
    ctx = mp.get_context("fork")
    q, barrier = ctx.Queue(), ctx.Barrier(nclients)
    ps = [ctx.Process(target=_client, args=(path, n, pace, barrier, q, i)) for i in range(nclients)]
    cpu0 = broker_cpu(broker_pid) if broker_pid else 0.0
    hot0 = hot_answered(path)
    for p in ps:
        p.start()
    lat = [x for _ in ps for x in q.get(timeout=600)]
    for p in ps:
        p.join()
    cpu = broker_cpu(broker_pid) - cpu0 if broker_pid else 0.0
    # 2 requests per round trip (+ the warm-up one and HELLO per client)
    return _summary(lat, nclients, pace, cpu, nclients * (2 * n + 3), hot_answered(path) - hot0)


def c_latency(exe, path, nclients=64, n=200, pace=0.0, broker_pid=None, tmp="/tmp", per_start=False):
    """per_start: a connection per round trip, HELLO + ACQUIRE_PROGRAM in one
    write, closed after the plan (as ldpool-exec starts a program)."""
    out = os.path.join(tmp, f"broker_load.{os.getpid()}.bin")
    cpu0 = broker_cpu(broker_pid) if broker_pid else 0.0
    hot0 = hot_answered(path) if broker_pid else None      # None: not our broker
    r = subprocess.run([exe, path, PROGRAM, str(nclients), str(n), str(pace * 1e6), out]
                       + (["connect"] if per_start else []),
                       capture_output=True, text=True, timeout=600)
    cpu = broker_cpu(broker_pid) - cpu0 if broker_pid else 0.0
    if r.returncode:
        raise RuntimeError(r.stderr.strip())
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    lat = [x / 1e9 for x in struct.unpack(f"<{len(data) // 8}Q", data)]
    return _summary(lat, nclients, pace, cpu, nclients * (2 * n + (2 if per_start else 3)),
                    None if hot0 is None else hot_answered(path) - hot0)


def _report(kind, res):
    pace = res["pace_ms"]
    print(f"\n64 {kind} clients, {'closed loop' if not pace else f'one request per {pace:g} ms each'}: "
          f"p50 {res['p50_us']} us, p90 {res['p90_us']} us, p99 {res['p99_us']} us "
          f"(target p99 < 1000 us), max {res['max_us']} us; "
          f"broker CPU {res['broker_us_per_request']} us per request, "
          f"{res['native_share']:.0%} answered by the native hot path")


@pytest.mark.parametrize("pace", [0.0, 0.02], ids=["closed-loop", "paced-20ms"])
def test_roundtrip_64_clients(benchmark, broker, pace):
    res = benchmark.pedantic(concurrent_latency, args=(broker.socket, 64, 200, pace, broker.proc.pid),
                             rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    _report("Python", res)


@pytest.fixture(scope="module")
def c_client(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler for benchmarks/broker_load.c")
    exe = str(tmp_path_factory.mktemp("load") / "broker_load")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broker_load.c")
    subprocess.run([cc, "-O2", "-o", exe, src, "-lm"], check=True)
    return exe


@pytest.mark.parametrize("pace", [0.0, 0.02], ids=["closed-loop", "paced-20ms"])
def test_roundtrip_64_c_clients(benchmark, broker, c_client, pace, tmp_path):
    res = benchmark.pedantic(c_latency, args=(c_client, broker.socket, 64, 200, pace,
                                              broker.proc.pid, str(tmp_path)),
                             rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    _report("C", res)


@pytest.fixture(scope="module")
def null_server(tmp_path_factory, broker, c_client):
    """benchmarks/null_broker.c on a socket of its own: the same replies
    (the real plan's size) with no work behind them."""
    cc = shutil.which("cc") or shutil.which("gcc")
    d = tmp_path_factory.mktemp("null")
    exe, sock = str(d / "null_broker"), str(d / "null.sock")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "null_broker.c")
    subprocess.run([cc, "-O2", "-o", exe, src], check=True)
    c = Lean(broker.socket)
    p = subprocess.Popen([exe, sock, str(c.call(c.acq))])       # the real plan's size
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield sock
    p.kill()
    p.wait()


@pytest.mark.parametrize("pace", [0.0, 0.02], ids=["closed-loop", "paced-20ms"])
def test_roundtrip_64_c_clients_floor(benchmark, null_server, c_client, pace, tmp_path):
    """The same 64 C clients against a server that does nothing
    (null_broker.c): the part of the latency that is the clients' and the
    kernel's on this machine, which no broker can take away.  Closed loop
    on 2 cores its p99 is itself above 1 ms (64 clients x ~15 us of client
    CPU per round trip / 2 CPUs), so there issue 4's target is out of reach
    of any broker; paced, it is the margin the broker has."""
    res = benchmark.pedantic(c_latency, args=(c_client, null_server, 64, 200, pace, None, str(tmp_path)),
                             rounds=1, iterations=1)
    res.pop("broker_us_per_request", None)
    res.pop("native_share", None)
    benchmark.extra_info.update(res)
    print(f"\n64 C clients against null_broker, {'closed loop' if not pace else f'paced {pace * 1e3:g} ms'}: "
          f"p50 {res['p50_us']} us, p99 {res['p99_us']} us (the floor)")


def test_kill_stress_10000(benchmark, tmp_path):
    """The crash test's workload at 10,000 kills (about 2 minutes)."""
    import test_broker_crash as T
    os.environ["LDPOOL_KILL_ITERATIONS"] = os.environ.get("LDPOOL_STRESS_ITERATIONS", "10000")
    t0 = time.monotonic()
    benchmark.pedantic(T.test_sigkill_clients_at_random_moments, args=(tmp_path,),
                       rounds=1, iterations=1)
    benchmark.extra_info.update(kills=int(os.environ["LDPOOL_KILL_ITERATIONS"]),
                                seconds=round(time.monotonic() - t0, 1))


@pytest.mark.parametrize("pace", [0.0, 0.02], ids=["closed-loop", "paced-20ms"])
def test_starts_64_c_clients(benchmark, broker, c_client, pace, tmp_path):
    """A connection per start, as ldpool-exec makes them: HELLO +
    ACQUIRE_PROGRAM in one write, the close releases (latency: connect to
    plan; 2 requests per start)."""
    res = benchmark.pedantic(c_latency, args=(c_client, broker.socket, 64, 200, pace,
                                              broker.proc.pid, str(tmp_path), True),
                             rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    _report("C per-start", res)
