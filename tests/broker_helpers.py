"""A real broker process on a private socket and pool, for the broker tests."""
import os
import signal
import socket
import subprocess
import time
import uuid

import posix_ipc
import pytest

from loader import client as C

PROGRAMS = ["/usr/bin/xz", "/usr/bin/gzip", "/usr/bin/zstd", "/usr/bin/sqlite3"]


@pytest.fixture
def broker(tmp_path):
    """A private broker for one test (import it by name to use it)."""
    b = BrokerProc(tmp_path / "b").start()
    yield b
    b.cleanup()


class BrokerProc:
    def __init__(self, directory, linger=120, pool_size="256M", extra=(), pool=None):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "broker.sock")
        self.pool = pool or f"/ldpool-test-{uuid.uuid4().hex[:12]}"
        self.journal = os.path.join(self.dir, self.pool.strip("/") + ".journal")
        self.logpath = os.path.join(self.dir, "broker.log")
        self.args = ["ldpool", "broker", "--socket", self.socket, "--pool", self.pool,
                     "--pool-size", pool_size, "--linger", str(linger), *extra]
        self.proc = None

    def start(self, timeout=60):
        log = open(self.logpath, "ab")
        # cwd elsewhere: `python -m` must not import the source tree in CI
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=self.dir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}: {self.log()}")
            if answering(self.socket):
                return self
            time.sleep(0.02)
        raise AssertionError(f"broker did not answer within {timeout}s: {self.log()}")

    def log(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def connect(self, **kw):
        return C.connect(self.socket, **kw)

    def stats(self):
        with self.connect(name="stats") as c:
            return c.stats()

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def cleanup(self):
        self.kill(signal.SIGTERM)
        try:
            posix_ipc.unlink_shared_memory(self.pool)
        except posix_ipc.ExistentialError:
            pass


def raw_connect(path, timeout=120):
    """A bare client socket, for tests that speak the wire protocol by hand."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def reply(s):
    """The next frame on a raw socket, which must not be an ERROR: (op, payload)."""
    from loader import protocol as P
    op, payload = P.recv_frame(s)
    assert op != P.ERROR, payload
    return op, payload


def answering(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def image_refs(stats):
    return {im["key"]: im["refs"] for im in stats["images"]}


def others(stats, me_name="stats"):
    """Clients other than the stats connection itself."""
    return [c for c in stats["clients"] if c["name"] != me_name]


def stop_and_unlink(sock):
    """Stop the broker answering on `sock` (SIGTERM: it removes an empty
    pool itself) and remove its default pool's name, which a process still
    mapping images, or a broker killed earlier, leaves behind on purpose
    (mappings outlive the name): a test run leaves nothing in /dev/shm."""
    from loader import protocol as P
    try:
        with C.connect(sock, timeout=5) as c:
            pid = int(c.info.get("broker_pid", 0))
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
    except Exception:                       # no broker, or it has exited
        pass
    try:
        posix_ipc.unlink_shared_memory(P.default_pool_name(sock))
    except posix_ipc.ExistentialError:
        pass
