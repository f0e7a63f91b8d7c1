"""The pool, its allocators, placements, refcounts and journal: real POSIX
shm, real files; no broker process here (see test_broker*.py)."""
import ctypes
import errno
import mmap
import os
import uuid

import posix_ipc
import pytest
from hypothesis import given, settings, strategies as st

from host_broker import journal
from host_broker.extents import Extents, OutOfSpace
from host_broker.placement import GUARD, WINDOW, WINDOW_SIZE, Placements
from host_broker.pool import HEADER_SIZE, Pool, PoolError, parse_size
from host_broker.refcount import RefCounts
from loader.errors import BrokerError

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value


@pytest.fixture
def pool():
    name = f"/ldpool-test-{uuid.uuid4().hex[:12]}"
    p = Pool.create(name, 4 << 20, epoch=7, window=WINDOW, window_size=WINDOW_SIZE)
    yield p
    if not p.mm.closed:
        p.close()
    posix_ipc.unlink_shared_memory(name)


def test_parse_size():
    assert parse_size("1G") == 1 << 30
    assert parse_size("256M") == 256 << 20
    assert parse_size(str(1 << 21)) == 1 << 21
    for bad in ("3M", "1K", "lots", "-1G"):
        with pytest.raises(BrokerError):
            parse_size(bad)


def test_pool_is_sparse_and_reattachable(pool):
    st = os.fstat(pool._shm.fd)
    assert st.st_size == 4 << 20
    assert st.st_blocks * 512 <= 2 * HEADER_SIZE          # only the header page exists
    off = pool.alloc(100_000)
    assert off >= HEADER_SIZE and off % 4096 == 0
    pool.view[off:off + 5] = b"hello"
    before = pool.resident_bytes()
    pool.free(off)
    assert pool.resident_bytes() < before                  # punched out again
    assert bytes(pool.view[off:off + 5]) == bytes(5)
    pool.view[off:off + 5] = b"hello"
    # one broker per pool: a second one cannot take it, nor recreate it
    with pytest.raises(PoolError, match="in use by another broker"):
        Pool.attach(pool.name)
    with pytest.raises(PoolError, match="in use by another broker"):
        Pool.create(pool.name, 4 << 20, 8, WINDOW, WINDOW_SIZE)
    instance = pool.instance
    pool.close()                                           # the broker dies; the pool stays
    again = Pool.attach(pool.name)
    try:
        assert (again.epoch, again.instance, again.size) == (7, instance, 4 << 20)
        assert bytes(again.view[off:off + 5]) == b"hello"
    finally:
        again.close()


def test_attach_errors(pool):
    with pytest.raises(PoolError, match="does not exist"):
        Pool.attach("/ldpool-test-missing-" + uuid.uuid4().hex[:8])
    pool.view[0:8] = b"NOTAPOOL"
    pool.close()
    with pytest.raises(PoolError, match="header is corrupted"):
        Pool.attach(pool.name)


def test_pool_full_is_a_clear_error(pool):
    with pytest.raises(PoolError, match="pool .* is full"):
        pool.alloc(8 << 20)


def test_readonly_descriptor_cannot_be_made_writable(pool):
    fd = pool.readonly_fd()
    import fcntl
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    size = pool.size
    # MAP_SHARED + PROT_WRITE is refused outright
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    assert addr == MAP_FAILED and ctypes.get_errno() == errno.EACCES
    # a read-only shared mapping cannot be mprotect'ed writable
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert addr != MAP_FAILED
    try:
        assert libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_WRITE) == -1
        assert ctypes.get_errno() == errno.EACCES
        assert ctypes.string_at(addr, 8) == b"LDPPOOL1"
    finally:
        libc.munmap(addr, size)
    # a private mapping may be written, but only the process's copy changes
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    assert addr != MAP_FAILED
    try:
        ctypes.memmove(addr, b"XXXXXXXX", 8)
    finally:
        libc.munmap(addr, size)
    assert bytes(pool.view[0:8]) == b"LDPPOOL1"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 300_000), st.sampled_from([4096, 65536, 1 << 21])),
                max_size=80))
def test_extents_never_overlap(ops):
    ex = Extents(0x10000, 64 << 20)
    live = []
    for is_alloc, size, align in ops:
        if is_alloc or not live:
            try:
                off = ex.alloc(size, align)
            except OutOfSpace:
                continue
            assert off % align == 0 and 0x10000 <= off and off + size <= 0x10000 + (64 << 20)
            live.append(off)
        else:
            ex.free(live.pop(size % len(live)))
        ex.check()
    for off in live:
        ex.free(off)
    ex.check()
    assert ex.used_bytes == 0 and ex._free == [(0x10000, 64 << 20)]


def test_placements_slide_and_ranges():
    a, b = Placements(), Placements()
    for p in (a, b):
        assert p.slide % 4096 == 0 and WINDOW <= p.extents.start
        assert p.extents.start + p.span <= WINDOW + WINDOW_SIZE
    assert a.slide != b.slide          # random per epoch (1 in 3e9 to collide)
    ranges = [(a.alloc(s), s) for s in (4096, 1 << 20, 12345, 1 << 24)]
    ranges.append((a.alloc(8192, 1 << 21), 8192))
    assert ranges[-1][0] % (1 << 21) == 0
    ranges.sort()
    for (x, xs), (y, _ys) in zip(ranges, ranges[1:]):
        assert x + xs + GUARD <= y                       # disjoint, guard page between
    # a range freed comes back (after the linger delay, which the broker enforces)
    first = ranges[0][0]
    a.free(first)
    assert a.alloc(4096) == first


def test_refcounts_leases_and_linger():
    now = [100.0]
    r = RefCounts(lease_prefix=3, clock=lambda: now[0])
    for k in "abc":
        r.track(k)
    r.track("d", deps=["c"])
    l1 = r.new_lease(1, ["a", "b"])
    l2 = r.new_lease(2, ["a", "d"])
    assert l1.id >> 32 == 3 and l2.id == l1.id + 1
    assert r.refs == {"a": 2, "b": 1, "c": 0, "d": 1}
    r.extend(l1, ["c"])
    r.drop_objects(l1, [1])                 # dlclose of b
    assert r.refs["b"] == 0 and l1.keys == ["a", None, "c"]
    r.check()
    now[0] += 10
    assert set(r.evictable(5)) == {"b"}     # c is referenced; d pins c anyway
    assert r.drop_client(2) == 1
    assert r.refs["d"] == 0 and r.evictable(5) == ["b"]
    now[0] += 10
    assert set(r.evictable(5)) == {"b", "d"}
    r.untrack("d", deps=["c"])
    r.release(l1.id)
    now[0] += 10
    assert set(r.evictable(5)) == {"a", "b", "c"}
    r.check()
    with pytest.raises(KeyError):
        r.release(l1.id)


def test_journal_roundtrip_and_corruption(tmp_path):
    path = str(tmp_path / "j")
    assert journal.load(path) is None
    state = {"version": 1, "images": [{"key": "k", "base": 1 << 45}], "epoch": 5}
    journal.save(path, state)
    assert journal.load(path) == state
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    data = open(path, "rb").read()
    for bad, why in [(data[:-3], "checksum"), (data.replace(b'"epoch":5', b'"epoch":6'), "checksum"),
                     (b"garbage", "bad header"), (b"", "bad header"),
                     (b"LDPJRNL1 " + data.split(b" ", 1)[1][:64] + b"\n{}", "checksum")]:
        open(path, "wb").write(bad)
        with pytest.raises(journal.JournalError, match=why):
            journal.load(path)
