"""Python client of the broker: connect (starting the embedded per-user broker
when nobody answers), acquire and release leases, read stats, and reclaim
leases after a broker restart. The C launcher does the same in C
(docs/protocol.md).

    conn = loader.client.connect(start_embedded=True)
    plan = conn.acquire_program("/usr/bin/xz", env={"LD_LIBRARY_PATH": "..."})
    lease = plan_lease(plan)
    ...
    conn.release(lease)      # or just close / exit / die

The connection holds the references: keep it open while the images are
mapped."""
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time

from loader import protocol as P
from loader.errors import BrokerError

OBJ_SIZE = 248               # sizeof(struct ldp_obj)
_HDR = struct.Struct("<8sII IIII II II 8Q QQQQ")


def plan_lease(plan):
    return struct.unpack_from("<Q", plan, _HDR.size - 8)[0]


def plan_objects(plan):
    """(l_addr, map_start, map_end) of every object of a plan."""
    h = _HDR.unpack_from(plan, 0)
    nobj, off_obj = h[3], h[11]
    return [struct.unpack_from("<QQQ", plan, off_obj + i * OBJ_SIZE) for i in range(nobj)]


class Connection:
    def __init__(self, socket_path, kind="process", name=None, timeout=30.0):
        self.socket_path, self.kind = socket_path, kind
        self.name = name if name is not None else os.path.basename(sys.argv[0] or "python")
        self.timeout = timeout
        self.pool_fd = None
        self.leases = {}          # lease id -> list of map_start, for RECLAIM
        self.sock = None
        self._open()

    def _open(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        try:
            s.connect(self.socket_path)
        except OSError:
            s.close()
            raise
        self.sock = s
        fds = []
        P.send_frame(s, P.HELLO, P.encode_kv([("proto", P.PROTO_VERSION), ("kind", self.kind),
                                              ("pid", os.getpid()), ("name", self.name)]))
        op, payload = P.recv_frame(s, fds)
        if self.pool_fd is not None:
            os.close(self.pool_fd)
        self.pool_fd = fds[0] if fds else None
        for extra in fds[1:]:
            os.close(extra)
        if op == P.ERROR:
            raise BrokerError(f"broker refused HELLO: {payload.decode(errors='replace')}")
        self.info = P.Request.decode(payload).as_dict()
        self.epoch = int(self.info["epoch"])
        self.pool_name = self.info["pool"]
        self.pool_size = int(self.info["pool_size"])

    # --- requests -----------------------------------------------------------
    def request(self, op, payload=b""):
        try:
            P.send_frame(self.sock, op, payload)
            rop, body = P.recv_frame(self.sock)
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            raise BrokerError(f"broker connection lost ({e.__class__.__name__})") from None
        if rop == P.ERROR:
            raise BrokerError(body.decode(errors="replace"))
        if rop != op | P.REPLY:
            raise P.ProtocolError(f"unexpected reply op {rop:#x} to {P.OP_NAMES.get(op, op)}")
        return body

    def acquire_program(self, path, argv0=None, cwd=None, env=None, preload=()):
        env = os.environ if env is None else env
        pairs = [("path", os.path.abspath(path)), ("argv0", argv0 or path),
                 ("cwd", cwd or os.getcwd())]
        pairs += [("env", f"{k}={v}") for k, v in env.items() if k.startswith("LD_")]
        pairs += [("preload", p) for p in preload]
        plan = self.request(P.ACQUIRE_PROGRAM, P.encode_kv(pairs))
        self.leases[plan_lease(plan)] = [o[1] for o in plan_objects(plan)]
        return plan

    def acquire_library(self, lease, name, requester="", flags=0):
        plan = self.request(P.ACQUIRE_LIBRARY, P.encode_kv(
            [("lease", lease), ("name", name), ("requester", requester), ("flags", flags)]))
        self.leases.setdefault(lease, []).extend(o[1] for o in plan_objects(plan))
        return plan

    def release(self, lease, objects=None):
        pairs = [("lease", lease)] + [("object", i) for i in (objects or ())]
        self.request(P.RELEASE, P.encode_kv(pairs))
        if not objects:
            self.leases.pop(lease, None)
        else:
            held = self.leases.get(lease, [])
            for i in objects:
                if 0 <= i < len(held):
                    held[i] = 0             # a hole: RECLAIM keeps later indices

    def stats(self):
        return json.loads(self.request(P.STATS))

    def ping(self):
        self.request(P.PING)

    def reclaim(self, lease, addrs, epoch=None):
        pairs = [("lease", lease), ("epoch", self.epoch if epoch is None else epoch)]
        pairs += [("addr", hex(a)) for a in addrs]
        return P.Request.decode(self.request(P.RECLAIM, P.encode_kv(pairs))).as_dict()

    def reconnect(self, start_embedded=False, wait=10.0):
        """After the broker died: connect to its successor and reclaim every
        lease this connection held. Returns the leases reclaimed; leases of
        another epoch (pool rebuilt) are dropped, the mappings stay valid."""
        old_epoch = self.epoch
        self.close_socket()
        deadline = time.monotonic() + wait
        while True:
            try:
                if start_embedded:
                    ensure_broker(self.socket_path)
                self._open()
                break
            except (OSError, BrokerError):
                if time.monotonic() > deadline:
                    raise BrokerError(f"no broker answers on {self.socket_path}") from None
                time.sleep(0.05)
        done = []
        for lease, addrs in list(self.leases.items()):
            try:
                self.reclaim(lease, addrs, epoch=old_epoch)
                done.append(lease)
            except BrokerError:
                del self.leases[lease]
        return done

    def close_socket(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self):
        self.close_socket()
        if self.pool_fd is not None:
            os.close(self.pool_fd)
            self.pool_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def broker_command(socket_path, idle_exit=30):
    return [sys.executable, "-m", "loader", "broker", "--detach", "--idle-exit", str(idle_exit),
            "--socket", socket_path]


def ensure_broker(socket_path, idle_exit=30):
    """Start the embedded broker for this socket unless one answers already
    (`ldpool broker --detach` returns once the socket accepts connections)."""
    socket_path = os.path.abspath(socket_path)
    env = dict(os.environ)
    # the broker must import this very copy of ldpool
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = top + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # cwd "/": `python -m` must not pick up a source checkout from the cwd
    r = subprocess.run(broker_command(socket_path, idle_exit), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=60,
                       cwd="/")
    if r.returncode != 0:
        line = (r.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
        raise BrokerError(f"cannot start the embedded broker: {line}")


def connect(socket_path=None, start_embedded=False, kind="process", name=None, timeout=30.0):
    """A Connection to the broker ($LDPOOL_SOCKET or the default socket);
    with start_embedded, start a private per-user broker when nobody answers."""
    path = socket_path or P.default_socket_path()
    try:
        return Connection(path, kind, name, timeout)
    except OSError as e:
        if not start_embedded or e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            raise BrokerError(f"cannot reach the broker at {path}: {e.strerror}") from None
    ensure_broker(path)
    try:
        return Connection(path, kind, name, timeout)
    except OSError as e:
        raise BrokerError(f"cannot reach the broker at {path}: {e.strerror}") from None
