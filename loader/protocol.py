"""The broker wire protocol (docs/protocol.md is the reference): frames of
`u32 length, u32 op` + payload, key=value request payloads, and the socket
path conventions. Shared by the broker and every Python client.

Frames are reassembled from a byte stream (FrameDecoder), never from
transport message boundaries, because guests will reach the broker over a
virtio-serial port that has none."""
import hashlib
import os
import socket
import struct

from loader.errors import BrokerError

PROTO_VERSION = 1
MAX_PAYLOAD = 64 << 20
HEADER = struct.Struct("<II")

HELLO, ACQUIRE_PROGRAM, ACQUIRE_LIBRARY, RELEASE, STATS, PING, RECLAIM = range(1, 8)
REQUEST_OPS = frozenset(range(1, 8))
REPLY = 0x100
ERROR = 0x1FF
OP_NAMES = {HELLO: "HELLO", ACQUIRE_PROGRAM: "ACQUIRE_PROGRAM", ACQUIRE_LIBRARY: "ACQUIRE_LIBRARY",
            RELEASE: "RELEASE", STATS: "STATS", PING: "PING", RECLAIM: "RECLAIM"}


class ProtocolError(BrokerError):
    """The peer sent something that is not a valid frame or payload."""


def frame(op, payload=b""):
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the 64 MiB limit")
    return HEADER.pack(len(payload), op) + payload


def encode_kv(pairs):
    """pairs: iterable of (key, value) or a dict; values may be str, bytes or int."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    out = bytearray()
    for k, v in items:
        if isinstance(v, int):
            v = str(v).encode()
        elif isinstance(v, str):
            v = os.fsencode(v)
        if b"\0" in v:
            raise ProtocolError(f"value of {k!r} contains a NUL byte")
        out += k.encode() + b"=" + v + b"\0"
    return bytes(out)


class Request:
    """Decoded key=value payload: first value per key, and all values."""

    __slots__ = ("pairs",)

    def __init__(self, pairs):
        self.pairs = pairs

    @classmethod
    def decode(cls, payload):
        if not payload:
            return cls([])
        if payload[-1:] != b"\0":
            raise ProtocolError("request payload is not NUL-terminated")
        pairs = []
        for item in bytes(payload[:-1]).split(b"\0"):
            k, sep, v = item.partition(b"=")
            if not sep or not k:
                raise ProtocolError(f"malformed key=value item {item[:40]!r}")
            pairs.append((k.decode("ascii", "replace"), v))
        return cls(pairs)

    def get(self, key, default=None):
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def all(self, key):
        return [v for k, v in self.pairs if k == key]

    def text(self, key, default=None):
        v = self.get(key)
        return default if v is None else os.fsdecode(v)

    def require(self, key):
        v = self.get(key)
        if v is None:
            raise ProtocolError(f"missing key '{key}'")
        return v

    def int(self, key, default=None, base=10):
        v = self.get(key)
        if v is None:
            if default is None:
                raise ProtocolError(f"missing key '{key}'")
            return default
        try:
            return int(v, base)
        except ValueError:
            raise ProtocolError(f"key '{key}': not a number: {v[:30]!r}") from None

    def as_dict(self):
        return {k: os.fsdecode(v) for k, v in self.pairs}


class FrameDecoder:
    """Incremental frame reassembly from arbitrary byte chunks (bytes,
    bytearray or memoryview: a chunk is never kept, only copied from)."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        """Append bytes; return the list of complete (op, payload) frames."""
        buf = self._buf
        if buf:
            buf += data
            with memoryview(buf) as view:
                frames, pos = _frames(view)
            del buf[:pos]
            return frames
        # the common case: whole requests in one read, nothing held back
        if len(data) >= 8:
            length, op = HEADER.unpack_from(data)
            if len(data) == 8 + length and length <= MAX_PAYLOAD:
                return [(op, bytes(data[8:]))]
        frames, pos = _frames(data)
        if pos < len(data):
            buf += data[pos:]
        return frames

    @property
    def pending(self):
        return len(self._buf)


def _frames(data):
    """The complete frames at the start of data, and where they end."""
    frames = []
    pos, end, unpack = 0, len(data), HEADER.unpack_from
    while end - pos >= 8:
        length, op = unpack(data, pos)
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"frame of {length} bytes exceeds the 64 MiB limit")
        start = pos + 8
        pos = start + length
        if pos > end:
            return frames, start - 8
        frames.append((op, bytes(data[start:pos])))
    return frames, pos


# --- socket location ---------------------------------------------------------

def default_socket_path(env=None):
    env = os.environ if env is None else env
    if env.get("LDPOOL_SOCKET"):
        return env["LDPOOL_SOCKET"]
    run = env.get("XDG_RUNTIME_DIR")
    if run:
        return os.path.join(run, "ldpool", "broker.sock")
    return f"/tmp/ldpool-{os.getuid()}/broker.sock"


def builtin_socket_path(env=None):
    """The default socket ignoring LDPOOL_SOCKET (it names the default pool)."""
    env = dict(os.environ if env is None else env)
    env.pop("LDPOOL_SOCKET", None)
    return default_socket_path(env)


def default_pool_name(socket_path):
    uid = os.getuid()
    if os.path.abspath(socket_path) == os.path.abspath(builtin_socket_path()):
        return f"/ldpool-{uid}"
    h = hashlib.sha256(os.fsencode(os.path.abspath(socket_path))).hexdigest()[:8]
    return f"/ldpool-{uid}-{h}"


# --- blocking I/O helpers for clients ---------------------------------------

def send_frame(sock, op, payload=b""):
    sock.sendall(frame(op, payload))


def recv_exact(sock, n, fds=None):
    """Read exactly n bytes; when fds is a list, collect SCM_RIGHTS descriptors."""
    buf = bytearray()
    while len(buf) < n:
        if fds is not None:
            data, anc, _flags, _addr = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16))
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    cnt = len(cdata) // 4
                    fds.extend(struct.unpack(f"{cnt}i", cdata[:cnt * 4]))
        else:
            data = sock.recv(n - len(buf))
        if not data:
            raise BrokerError("broker closed the connection")
        buf += data
    return bytes(buf)


def recv_frame(sock, fds=None):
    length, op = HEADER.unpack(recv_exact(sock, 8, fds))
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"frame of {length} bytes exceeds the 64 MiB limit")
    return op, recv_exact(sock, length) if length else b""
