"""First-fit allocator of aligned extents inside one range; used for pool
offsets (pool.py) and for virtual address ranges (placement.py). Pure
bookkeeping: it can be rebuilt from the list of live extents (journal)."""
import bisect


class OutOfSpace(Exception):
    pass


class Extents:
    def __init__(self, start, size, granule=4096):
        self.start, self.size, self.granule = start, size, granule
        self._free = [(start, size)]     # sorted, coalesced (offset, length)
        self.used = {}                   # offset -> length

    def _round(self, n):
        g = self.granule
        return max(g, (n + g - 1) // g * g)

    def alloc(self, size, align=None):
        size = self._round(size)
        align = max(align or self.granule, self.granule)
        for i, (off, length) in enumerate(self._free):
            a = (off + align - 1) // align * align
            if a + size <= off + length:
                self._take(i, a, size)
                return a
        raise OutOfSpace(f"no free extent of {size} bytes (aligned to {align:#x})")

    def reserve(self, off, size):
        """Mark [off, off+size) used (rebuilding from a journal)."""
        size = self._round(size)
        for i, (fo, fl) in enumerate(self._free):
            if fo <= off and off + size <= fo + fl:
                self._take(i, off, size)
                return
        raise ValueError(f"extent {off:#x}+{size:#x} is not free")

    def _take(self, i, a, size):
        off, length = self._free.pop(i)
        rest = []
        if a > off:
            rest.append((off, a - off))
        if a + size < off + length:
            rest.append((a + size, off + length - a - size))
        self._free[i:i] = rest
        self.used[a] = size

    def free(self, off):
        """Free the extent at `off`; returns its own length (not that of
        the free extent it merges into: the pool punches exactly that)."""
        size = freed = self.used.pop(off)
        i = bisect.bisect_left(self._free, (off, 0))
        # merge with the neighbours on either side
        if i < len(self._free) and off + size == self._free[i][0]:
            size += self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == off:
            po, pl = self._free.pop(i - 1)
            off, size = po, pl + size
            i -= 1
        self._free.insert(i, (off, size))
        return freed

    @property
    def used_bytes(self):
        return sum(self.used.values())

    def check(self):
        """Free and used extents tile the range exactly (tests)."""
        spans = sorted(list(self._free) + list(self.used.items()))
        pos = self.start
        for off, length in spans:
            assert off == pos, f"gap or overlap at {off:#x} (expected {pos:#x})"
            pos += length
        assert pos == self.start + self.size, "extents do not cover the range"
        for (a, al), (b, _bl) in zip(self._free, self._free[1:]):
            assert a + al < b, "free extents not coalesced"
