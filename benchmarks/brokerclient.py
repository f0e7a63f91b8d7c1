"""A minimal blocking broker client for measurements (docs/protocol.md),
built on loader.protocol: what a launcher does on the wire, with nothing
else in the timed path."""
import json
import os
import socket
import struct

from loader import protocol as P
from loader.errors import BrokerError

LEASE_OFFSET = 136  # struct ldp_plan_hdr: u64 lease after 10 u32, 8 u64 offsets, 3 u64


class Conn:
    def __init__(self, path, name="ldpool-bench"):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        fds = []
        self.hello = self.call(P.HELLO, {"proto": 1, "kind": "process", "pid": os.getpid(), "name": name}, fds)
        for fd in fds:
            os.close(fd)

    def call(self, op, kv=None, fds=None):
        P.send_frame(self.sock, op, P.encode_kv(kv or {}))
        rop, payload = P.recv_frame(self.sock, fds)
        if rop == P.ERROR:
            raise BrokerError(payload.decode("utf-8", "replace"))
        if rop != op | P.REPLY:
            raise P.ProtocolError(f"unexpected reply op {rop:#x}")
        return payload

    def acquire(self, path):
        plan = self.call(P.ACQUIRE_PROGRAM, [("path", path), ("argv0", path), ("cwd", "/")])
        return struct.unpack_from("<Q", plan, LEASE_OFFSET)[0], plan

    def release(self, lease):
        self.call(P.RELEASE, {"lease": lease})

    def ping(self):
        self.call(P.PING)

    def stats(self):
        return json.loads(self.call(P.STATS))

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
