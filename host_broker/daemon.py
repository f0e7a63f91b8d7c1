"""Starting the broker: its socket directory, the one-broker-per-socket
lock, its scheduling priority, and `--detach` (the embedded broker: bind,
fork into a new session, return once the socket accepts connections)."""
import asyncio
import fcntl
import grp
import os
import socket
import sys
import time

from loader.errors import BrokerError, LdpoolError


def gid_of(group):
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise BrokerError(f"unknown group '{group}'") from None


def stderr_log(msg):
    print(time.strftime("%H:%M:%S ") + f"ldpool broker[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def prepare_dir(socket_path, group=None):
    d = os.path.dirname(os.path.abspath(socket_path))
    try:
        if not os.path.isdir(d):
            os.makedirs(d, mode=0o700, exist_ok=True)
            if group:
                os.chown(d, -1, gid_of(group))
                os.chmod(d, 0o710)
        st = os.stat(d)
        # the lock and the log go there first: fail here, in one line
        os.close(os.open(socket_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise BrokerError(f"cannot use {e.filename or d} for the broker socket: {e.strerror}") from None
    # a directory someone else controls could swap the socket or the journal
    if st.st_uid not in (os.getuid(), 0) or (st.st_mode & 0o002 and not st.st_mode & 0o1000):
        raise BrokerError(f"{d}: owned by another user or writable by anyone; "
                          "refusing to put the broker socket there")


PRIORITIES = ("high", "normal", "batch")
HIGH_NICE = -5


def set_priority(mode, log):
    """Schedule the calling thread (the event loop: every request) as asked;
    return the initializer of the build worker threads.

    normal: the nice value we were started with.  Woken by a request, the
    broker preempts a running process as any interactive task would.
    high: nice -5 (root or CAP_SYS_NICE; otherwise normal, said once): woken
    ahead of competing processes and a larger share of the CPUs.
    batch: SCHED_BATCH: woken by a starting program that does not wait for
    the answer (the plan cache fast path), the broker never preempts it; but
    a client that waits (dlopen, a first start, RELEASE) then waits for a
    busy processor's time slice: with 64 clients on a loaded 2-core machine,
    p99 of an acquire/release round trip 1.7-3.9 ms against 0.6-1.6 ms for
    normal and high (which were alike within the noise).
    Builds (seconds of CPU for a large library) always run SCHED_BATCH at the
    starting nice value: they must take the processors neither from
    programs nor from the request path."""
    if mode not in PRIORITIES:
        raise BrokerError(f"unknown priority '{mode}' (one of {', '.join(PRIORITIES)})")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        if mode == "batch":
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        elif mode == "high" and base > HIGH_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, HIGH_NICE)
    except OSError as e:
        log(f"priority {mode}: {e.strerror}; running at normal priority")

    def worker_init():
        # Linux: nice and policy are per thread, and a new thread inherits its creator's
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, 0, base)
        except OSError:
            pass
    return worker_init


def lock(socket_path):
    """Hold <socket>.lock for the broker's life: one broker per socket."""
    fd = os.open(socket_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def answering(socket_path, timeout=1.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(socket_path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def detach(args, socket_path, pool_size, make_broker):
    """Fork the broker into its own session; the foreground process returns
    when the socket accepts connections (or reports why it could not)."""
    if answering(socket_path):
        return 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            os.setsid()
            os.chdir("/")
            logfd = os.open(os.path.join(os.path.dirname(socket_path), "broker.log"),
                            os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.close(null)
            os.close(logfd)
            lockfd = lock(socket_path)
            if lockfd is None:
                os.write(w, b"busy\n")
                os._exit(0)
            broker = make_broker()
            broker.bind()

            def ready():
                os.write(w, b"ok\n")
                os.close(w)
            asyncio.run(broker.serve(ready))
            code = 0
        except LdpoolError as e:
            stderr_log(str(e))
            try:
                os.write(w, str(e).encode() + b"\n")
            except OSError:
                pass
        except BaseException as e:
            stderr_log(f"fatal: {type(e).__name__}: {e}")
            try:
                os.write(w, f"broker failed: {e}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(w)
    msg = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        msg += chunk
    os.close(r)
    if msg.startswith(b"ok"):
        return 0
    if msg.startswith(b"busy"):
        # another broker is starting: wait for it to answer
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if answering(socket_path):
                return 0
            time.sleep(0.05)
        raise BrokerError(f"another broker holds {socket_path}.lock but does not answer")
    raise BrokerError(msg.decode(errors="replace").strip() or "the broker exited during start-up")
