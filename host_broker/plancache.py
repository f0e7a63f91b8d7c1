"""Plan cache files: the broker's answer to an ACQUIRE_PROGRAM, published
where ldpool-exec can use it without waiting for the broker.

A broker round trip costs more than the rest of a small program's start-up
(each wake-up of a sleeping process is ~60 us on a small VM), and for an
already pooled program the answer is a cached plan anyway. So when the
broker grants a program acquisition for the first time, it writes the plan
(lease 0) to `<socket>.plans/<FNV-1a-64 of the request payload, 16 hex>`;
the launcher builds the same payload, reads the file, pins the images
(host_broker/pins.py), maps, and sends its request without waiting for the
reply (`_native/launcher/fastpath.c`). docs/protocol.md has the format:

    char magic[8] = "LDPFAST1"; u32 version = 1, hdr_size;
    u64 epoch, pool_size;
    u64 cache_dev, cache_ino, cache_size, cache_mtime_ns;   /etc/ld.so.cache, 0s: absent
    u32 npin, payload_len;
    u64 off_pool_name, off_payload, off_pins, off_plan, plan_len;
    ... pool name (NUL-terminated), payload, npin x {u64 slot, stamp}, plan

Everything is 8-aligned; files are written whole (temporary name + rename)
in the per-user socket directory, mode 0600."""
import collections
import itertools
import os
import struct

MAGIC = b"LDPFAST1"
VERSION = 1
HDR = struct.Struct("<8sII QQ QQQQ II QQQQQ")
PIN = struct.Struct("<QQ")
PUBLISHED_MAX = 1024
FILES_MAX = 2048            # the directory may be a small tmpfs ($XDG_RUNTIME_DIR): oldest go first
_FNV_OFFSET, _FNV_PRIME, _M64 = 0xcbf29ce484222325, 0x100000001b3, (1 << 64) - 1


def fnv1a64(data):
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return h


def plans_dir(socket_path):
    """Per socket (several brokers may share a directory)."""
    return socket_path + ".plans"


def file_name(payload):
    return f"{fnv1a64(payload):016x}"


def _pad(b):
    return b + bytes(-len(b) % 8)


def encode(payload, plan, epoch, pool_name, pool_size, cache_id, pins):
    """The file's bytes; pins: (slot, stamp) per pooled object."""
    name = _pad(os.fsencode(pool_name) + b"\0")
    body = _pad(bytes(payload))
    pin_bytes = b"".join(PIN.pack(s, t) for s, t in pins)
    off_name = HDR.size
    off_payload = off_name + len(name)
    off_pins = off_payload + len(body)
    off_plan = off_pins + len(pin_bytes)
    dev, ino, size, mtime = cache_id or (0, 0, 0, 0)
    hdr = HDR.pack(MAGIC, VERSION, HDR.size, epoch, pool_size, dev, ino, size, mtime,
                   len(pins), len(payload), off_name, off_payload, off_pins, off_plan, len(plan))
    return b"".join((hdr, name, body, pin_bytes, plan))


class PlanCache:
    """Publishes each (payload, acquisition) once; `state` is the broker's
    BrokerState (pool, epoch, pins)."""

    def __init__(self, directory, state, log=print):
        self.dir, self.state, self.log = directory, state, log
        self._published = {}          # payload -> the Acquisition last written for it
        self._files = collections.OrderedDict()   # file names, oldest first
        self._seq = itertools.count()
        self._broken = False
        self._known = False

    def wipe(self):
        """A new epoch: no file of the old one may stay (the launcher would
        reject them anyway: epoch and stamps)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        except OSError as e:
            self.log(f"plan cache {self.dir}: {e.strerror}")
            return
        for n in names:
            try:
                os.unlink(os.path.join(self.dir, n))
            except OSError:
                pass
        self._files.clear()
        self._known = True

    def publish(self, payload, acq):
        """Called on every grant of a program acquisition: one dict lookup
        unless this acquisition was never written for this payload."""
        if self._published.get(payload) is acq or self._broken:
            return
        st = self.state
        pins = [st.pins.stamp(k) for k in acq.keys]
        if any(p is None for p in pins):
            return                      # no slot (yet): the slow path serves it
        cache_id = next((sid[:4] for path, sid in acq.files if path == "/etc/ld.so.cache"), None)
        data = encode(payload, acq.plan, st.epoch, st.pool_name, st.pool.size, cache_id, pins)
        name = file_name(payload)
        try:
            self._write(name, data)
        except OSError as e:
            self._broken = True         # say it once; starts still work (slow path)
            self.log(f"plan cache {self.dir}: {e.strerror}; the start-up fast path is off")
            return
        if len(self._published) >= PUBLISHED_MAX:
            self._published.clear()
        self._published[bytes(payload)] = acq
        self._bound(name)

    def _bound(self, name):
        """At most FILES_MAX files: the least recently written go (a
        re-attached broker first adopts what its predecessor wrote)."""
        if not self._known:
            self._known = True
            try:
                old = [(e.stat().st_mtime_ns, e.name) for e in os.scandir(self.dir) if not e.name.startswith(".")]
            except OSError:
                old = []
            self._files.update((n, None) for _t, n in sorted(old))
        self._files[name] = None
        self._files.move_to_end(name)
        while len(self._files) > FILES_MAX:
            old, _ = self._files.popitem(last=False)
            try:
                os.unlink(os.path.join(self.dir, old))
            except OSError:
                pass

    def _write(self, name, data):
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            pass
        tmp = os.path.join(self.dir, f".tmp{os.getpid()}-{next(self._seq)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(self.dir, name))
