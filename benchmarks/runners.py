"""The two ways a suite starts a real program -- directly under ld.so, or
through `ldpool-exec` from a private broker's pool -- and groups of idle
clients of either kind.  Whether ldpool's side works is probed, never
assumed: a suite reports "not available" with the reason rather than
numbers that were secretly ld.so's (a launcher fallback, say)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from . import measure

PROGRAMS = {  # startup suite: name -> argv (resolved on PATH)
    "true": ["/bin/true"],
    "xz": ["xz", "--version"],
    "openssl": ["openssl", "version"],
    "curl": ["curl", "--version"],
    "python3": ["/usr/bin/python3", "-c", "pass"],
    "llc-14": ["llc-14", "--version"],
}
# memory suites: clients that start, then sleep reading stdin
IDLE_CLIENTS = {
    "llc-14": ["llc-14", "-o", "/dev/null"],
    "python3": ["/usr/bin/python3", "-c", "import ssl, sqlite3, ctypes; input()"],
}


def resolve(argv):
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    return [exe] + list(argv[1:]) if exe else None


def ldpool_cmd():
    """`ldpool` as the user would run it (installed script, dev wrapper, or
    this interpreter with the source tree)."""
    exe = shutil.which("ldpool")
    return [exe] if exe else [os.environ.get("PYTHON", "python3"), "-m", "loader"]


class Broker:
    """A private `ldpool broker` on its own socket and pool, so a suite
    controls cold and warm pools and leaves the user's broker alone."""

    def __init__(self, pool_size="1G", linger=600):
        self.dir = tempfile.mkdtemp(prefix="ldpool-bench-")
        self.socket = os.path.join(self.dir, "broker.sock")
        self.pool = f"/ldpool-bench-{os.getpid()}-{int(time.monotonic_ns() % 1e9)}"
        self.pool_size, self.linger = pool_size, linger
        self.proc = None
        self.error = None

    @property
    def pool_paths(self):
        return {"/dev/shm/" + self.pool.lstrip("/")}

    def env(self, base=None):
        env = dict(os.environ if base is None else base)
        env["LDPOOL_SOCKET"] = self.socket
        env["XDG_RUNTIME_DIR"] = self.dir
        return env

    def start(self, timeout=30):
        cmd = ldpool_cmd() + ["broker", "--socket", self.socket, "--pool", self.pool,
                              "--pool-size", str(self.pool_size), "--linger", str(self.linger)]
        log = open(os.path.join(self.dir, "broker.log"), "w+b")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log.seek(0)
                lines = log.read().decode("utf-8", "replace").strip().splitlines()
                self.error = f"`ldpool broker` exited ({self.proc.returncode}): " + (lines[-1] if lines else "no output")
                self.proc = None
                return False
            if os.path.exists(self.socket):
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.connect(self.socket)
                    return True
                except OSError:
                    pass
            time.sleep(0.05)
        self.error = "`ldpool broker` did not open its socket within %ds" % timeout
        self.stop()
        return False

    def stop(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
            self.proc = None
        for p in self.pool_paths:
            try:
                os.unlink(p)
            except OSError:
                pass

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def pool_report(self):
        try:
            r = subprocess.run(ldpool_cmd() + ["pool", "--json"], capture_output=True, text=True,
                               env=self.env(), timeout=30)
            return json.loads(r.stdout) if r.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None

    def ranges(self):
        """(start, end, label) of every placement the broker reports, for
        attributing pooled mappings to their library."""
        return placement_ranges(self.pool_report())


def placement_ranges(report):
    """Read placements out of `ldpool pool --json` without depending on its
    exact layout: any object with an address and an end or size, and a
    path or name."""
    out = []

    def num(v):
        if isinstance(v, int):
            return v
        if isinstance(v, str):
            try:
                return int(v, 0)
            except ValueError:
                return None
        return None

    def walk(o):
        if isinstance(o, dict):
            lo = next((num(o[k]) for k in ("map_start", "start", "address", "addr", "base") if k in o), None)
            hi = next((num(o[k]) for k in ("map_end", "end") if k in o), None)
            if hi is None and lo is not None:
                size = next((num(o[k]) for k in ("va_size", "map_size", "size", "length") if k in o), None)
                hi = lo + size if size else None
            name = next((o[k] for k in ("path", "soname", "name", "file") if isinstance(o.get(k), str)), None)
            if lo and hi and name:
                out.append((lo, hi, name))
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(report)
    return out


def ldpool_exec():
    return shutil.which("ldpool-exec")


def ldpool_argv(argv):
    return [ldpool_exec()] + resolve(argv)


def probe(broker):
    """(True, "") when ldpool-exec really runs programs from this broker's
    pool; else (False, reason)."""
    exe = ldpool_exec()
    if not exe:
        return False, "ldpool-exec is not on PATH"
    if broker.proc is None:
        return False, broker.error or "no broker"
    env = broker.env()
    try:
        r = subprocess.run([exe, "/bin/echo", "ldpool-probe"], capture_output=True, text=True,
                           env=env, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "ldpool-exec /bin/echo timed out"
    if r.returncode != 0 or r.stdout != "ldpool-probe\n":
        why = (r.stderr.strip().splitlines() or ["wrong output"])[-1]
        return False, f"ldpool-exec /bin/echo failed (exit {r.returncode}): {why}"
    # a launcher that fell back to plain ld.so would print the right thing:
    # check that a live client really maps the pool
    with Clients(["/bin/cat"], 1, env=env, ldpool=True) as c:
        if not c.ready:
            return False, "ldpool-exec /bin/cat: " + c.failure()
        if not measure.has_mapping(c.pids[0], lambda p: p in broker.pool_paths or p.startswith("/dev/shm/ldpool")):
            return False, "ldpool-exec ran /bin/cat without mapping the pool (fallback to ld.so?)"
    return True, ""


def verify_output(argv, broker):
    """Run a program natively and through ldpool-exec: same stdout and exit
    status, and no launcher notice on stderr?  Returns (ok, reason)."""
    argv = resolve(argv)
    env = dict(broker.env(), LDPOOL_TIMING="1")
    try:
        a = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        b = subprocess.run([ldpool_exec()] + argv, capture_output=True, timeout=120, env=env,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if (a.returncode, a.stdout) != (b.returncode, b.stdout):
        return False, f"differs from native run (exit {b.returncode} vs {a.returncode})"
    # anything on stderr beyond the native run's and the timing line is a
    # launcher notice (a fallback to ld.so, say): then these are not
    # ldpool's numbers
    extra = [l for l in b.stderr.decode("utf-8", "replace").splitlines()
             if l not in a.stderr.decode("utf-8", "replace").splitlines()
             and not l.startswith("ldpool-exec: timing")]
    if extra:
        return False, f"launcher notice: {extra[0][:160]}"
    return True, ""


class Clients:
    """N copies of a program idle on a pipe we keep open; started under
    ld.so, or through ldpool-exec, optionally opted into KSM and/or with
    ASLR off (setarch -R)."""

    def __init__(self, argv, n, env=None, ldpool=False, ksm_merge=False, no_aslr=False,
                 timeout=120):
        from . import ksm
        argv = resolve(argv)
        if ldpool:
            argv = [ldpool_exec()] + argv
        if no_aslr:
            argv = [shutil.which("setarch"), "-R"] + argv
        self.argv, self.n, self.pids, self.procs = argv, n, [], []
        self.ready = False
        r, self._w = os.pipe()
        self._err = tempfile.TemporaryFile()
        pre = ksm.merge_this_process if ksm_merge else None
        try:
            for _ in range(n):
                p = subprocess.Popen(argv, stdin=r, stdout=subprocess.DEVNULL,
                                     stderr=self._err, env=env, preexec_fn=pre)
                self.procs.append(p)
                self.pids.append(p.pid)
        finally:
            os.close(r)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            if all(measure.waiting_on_read(pid) for pid in self.pids):
                self.ready = True
                break
            time.sleep(0.02)
        self.started_at = time.monotonic()

    def failure(self):
        """Why the group is not ready: the first client that exited, its
        status and the last line of the clients' stderr."""
        dead = [p for p in self.procs if p.poll() is not None]
        self._err.seek(0)
        lines = self._err.read().decode("utf-8", "replace").strip().splitlines()
        last = lines[-1][:200] if lines else "no stderr"
        if dead:
            return f"{len(dead)} of {self.n} clients exited (status {dead[0].returncode}): {last}"
        return f"clients did not go idle on stdin in time: {last}"

    def alive(self):
        return all(p.poll() is None for p in self.procs)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        if self._w is not None:
            os.close(self._w)
            self._w = None
            self._err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
