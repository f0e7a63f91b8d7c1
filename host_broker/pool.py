"""The pool: one fixed-size POSIX shared-memory file (posix_ipc) holding every
pre-relocated image, addressed by offset only (a guest sees the same bytes as
an ivshmem BAR2). The size is a power of two so QEMU can take the file as-is;
the file is sparse: only written pages cost memory, and freed extents are
punched out again (MADV_REMOVE).

Page 0 is a header that clients and guests can check (layout in
docs/protocol.md); the pin table follows it (host_broker/pins.py: one u64
stamp per image, locked by clients with OFD locks, so it lives in the pool
and survives the broker); everything else is handed out by an Extents
allocator."""
import fcntl
import mmap
import os
import re
import secrets
import struct

import posix_ipc

from host_broker.extents import Extents
from loader.errors import BrokerError

MAGIC = b"LDPPOOL1"
VERSION = 2                  # 2: the pin table after the header page
PAGE = 4096
HEADER_SIZE = PAGE
PIN_OFF = HEADER_SIZE
PIN_SLOTS = 8192             # 64 KiB of u64 stamps; sparse until used
DATA_OFF = PIN_OFF + PIN_SLOTS * 8
_HDR = struct.Struct("<8sII QQQQ 16s QQ")
DEFAULT_SIZE = 1 << 30


class PoolError(BrokerError):
    """The pool is missing, of the wrong size or corrupted."""


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise BrokerError(f"bad pool size '{text}': use e.g. 1G, 256M or a byte count")
    n = int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
    if n < (1 << 21) or n & (n - 1):
        raise BrokerError(f"bad pool size '{text}': must be a power of two of at least 2M")
    return n


class Pool:
    def __init__(self, name, shm, mm, size, epoch, window, window_size, instance):
        self.name, self._shm, self.mm, self.size = name, shm, mm, size
        self.epoch, self.window, self.window_size, self.instance = epoch, window, window_size, instance
        self.extents = Extents(DATA_OFF, size - DATA_OFF)
        self.view = memoryview(mm)
        self._ro = None

    @classmethod
    def create(cls, name, size, epoch, window, window_size):
        """A fresh pool; an existing one of that name is unlinked first (its
        mappings in running processes stay valid)."""
        try:
            old = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            pass
        except (posix_ipc.Error, OSError) as e:
            raise PoolError(f"cannot open pool {name}: {e}") from None
        else:
            try:
                _lock(old.fd, name)
            finally:
                old.close_fd()
            unlink(name)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except (posix_ipc.Error, OSError) as e:
            raise PoolError(f"cannot create pool {name}: {e}") from None
        _lock(shm.fd, name)
        mm = _map(shm.fd, size, name)
        instance = secrets.token_bytes(16)
        _HDR.pack_into(mm, 0, MAGIC, VERSION, HEADER_SIZE, size, epoch, window, window_size, instance,
                       PIN_OFF, PIN_SLOTS)
        return cls(name, shm, mm, size, epoch, window, window_size, instance)

    @classmethod
    def attach(cls, name):
        """Re-attach to the pool a previous broker left; PoolError if it is not
        there or its header is not ours."""
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise PoolError(f"pool {name} does not exist") from None
        except (posix_ipc.Error, OSError) as e:
            raise PoolError(f"cannot open pool {name}: {e}") from None
        try:
            _lock(shm.fd, name)
        except PoolError:
            shm.close_fd()
            raise
        size = os.fstat(shm.fd).st_size
        if size < HEADER_SIZE or size & (size - 1):
            shm.close_fd()
            raise PoolError(f"pool {name}: size {size} is not a power of two")
        mm = _map(shm.fd, size, name)
        magic, ver, hsize, psize, epoch, window, wsize, inst, pin_off, pin_slots = _HDR.unpack_from(mm, 0)
        if (magic != MAGIC or ver != VERSION or hsize != HEADER_SIZE or psize != size
                or (pin_off, pin_slots) != (PIN_OFF, PIN_SLOTS)):
            mm.close()
            shm.close_fd()
            raise PoolError(f"pool {name}: header is corrupted or of another version")
        return cls(name, shm, mm, size, epoch, window, window_size=wsize, instance=inst)

    def readonly_fd(self):
        """An O_RDONLY descriptor of the pool, the only kind clients get: a
        MAP_SHARED|PROT_WRITE mapping of it, or mprotect to writable, fails."""
        if self._ro is None:
            self._ro = posix_ipc.SharedMemory(self.name, read_only=True).fd
        return self._ro

    def alloc(self, size, align=PAGE):
        from host_broker.extents import OutOfSpace
        try:
            return self.extents.alloc(size, align)
        except OutOfSpace:
            raise PoolError(f"pool {self.name} is full ({self.size >> 20} MiB): "
                            f"cannot place {size >> 10} KiB; restart the broker with a larger --pool-size") from None

    def free(self, off):
        size = self.extents.free(off)
        # give the pages back to the system; the file keeps its size
        self.mm.madvise(mmap.MADV_REMOVE, off, size)

    def rw_fd(self):
        """The broker's own read-write descriptor (its OFD locks are the
        broker's side of the pins)."""
        return self._shm.fd

    def resident_bytes(self):
        return os.fstat(self._shm.fd).st_blocks * 512

    def close(self):
        self.view.release()
        self.mm.close()
        self._shm.close_fd()
        if self._ro is not None:
            os.close(self._ro)
            self._ro = None


class PoolInUse(PoolError):
    pass


def _lock(fd, name):
    """One broker per pool: it holds an flock on its descriptor for life
    (clients' read-only descriptors are separate opens, never locked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PoolInUse(f"pool {name} is in use by another broker") from None


def _map(fd, size, name):
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as e:
        raise PoolError(f"cannot map pool {name}: {e}") from None


def unlink(name):
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass
