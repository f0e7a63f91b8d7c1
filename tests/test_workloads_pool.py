"""Long-running brokers: freeing an image must give back exactly its own
pool pages.  Seen in a sweep of real workloads against one broker that
evicted images for an hour: live libraries' .data pages read as zeros
(sqlite's functions lost their argument counts, argp its defaults) and
re-attaching found "content hash mismatch"."""
import uuid

import posix_ipc
import pytest

from host_broker.pool import PAGE, Pool


@pytest.fixture
def pool():
    name = f"/ldpool-test-{uuid.uuid4().hex[:12]}"
    p = Pool.create(name, 4 << 20, epoch=7, window=1 << 40, window_size=1 << 32)
    yield p
    p.close()
    posix_ipc.unlink_shared_memory(name)


def test_free_after_a_free_neighbour_keeps_the_next_image(pool):
    a, b, c = (pool.alloc(2 * PAGE) for _ in range(3))
    assert a + 2 * PAGE == b and b + 2 * PAGE == c
    pool.view[c:c + 2 * PAGE] = b"\xa5" * (2 * PAGE)
    pool.free(a)
    pool.free(b)            # merges with a's free extent: only b is punched
    assert bytes(pool.view[c:c + 2 * PAGE]) == b"\xa5" * (2 * PAGE)
    pool.extents.check()
