"""/etc/ld.so.cache as glibc 2.36's ld.so reads it (elf/dl-cache.c).

Three layouts exist: the new format alone ("glibc-ld.so.cache1.1", what
Debian 12's ldconfig writes), the old libc5 format ("ld.so-1.7.0") alone,
or the old format with the new one embedded after it.  New-format entries
carry an hwcap word: bit 62 marks a glibc-hwcaps entry whose low 32 bits
index the extension section's list of subdirectory names, and whose bits
32..41 hold the ISA level the library needs.  The lookup is a port of
search_cache(): binary search with _dl_cache_libcmp (digit runs compare
numerically), then a forward scan over the entries of that name that picks
the best glibc-hwcaps entry, else the first plain entry that fits.
"""
import os
import struct

from loader import hwcaps as _hwcaps

LD_SO_CACHE = "/etc/ld.so.cache"

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
_OLD_HDR = struct.Struct("<11sxI")           # magic, pad, nlibs (then 12-byte entries)
_OLD_ENTRY = struct.Struct("<iII")           # flags, key, value
_NEW_HDR = struct.Struct("<20sIIB3sI12s")    # magic+version, nlibs, len_strings, flags, pad, ext offset, unused
_NEW_ENTRY = struct.Struct("<iIIIQ")         # flags, key, value, osversion, hwcap
_EXT_MAGIC = (-358342284) & 0xFFFFFFFF
EXT_GENERATOR, EXT_GLIBC_HWCAPS = 0, 1

# sysdeps/unix/sysv/linux/x86_64/dl-cache.h: only libc6 x86-64 entries count
DEFAULT_ID = 0x303
HWCAP_EXTENSION = 1 << 62
ISA_LEVEL_MASK = (1 << 10) - 1
_TLS_MASK = 1 << 63


def libcmp(p1: bytes, p2: bytes) -> int:
    """_dl_cache_libcmp: like strcmp, but runs of digits compare as numbers."""
    i = j = 0
    n1, n2 = len(p1), len(p2)
    while i < n1:
        c1 = p1[i]
        c2 = p2[j] if j < n2 else 0
        if 48 <= c1 <= 57:
            if 48 <= c2 <= 57:
                v1 = v2 = 0
                while i < n1 and 48 <= p1[i] <= 57:
                    v1 = v1 * 10 + p1[i] - 48
                    i += 1
                while j < n2 and 48 <= p2[j] <= 57:
                    v2 = v2 * 10 + p2[j] - 48
                    j += 1
                if v1 != v2:
                    return v1 - v2
                continue
            return 1
        if 48 <= c2 <= 57:
            return -1
        if c1 != c2:
            return c1 - c2
        i += 1
        j += 1
    return 0 - (p2[j] if j < n2 else 0)


class LdCache:
    """One parsed ld.so.cache file.  `lookup(name)` answers as ld.so would
    on this CPU; `entries` lists (name, path, flags, hwcap) for tools."""

    def __init__(self, path=LD_SO_CACHE, hw=None):
        self.path = path
        self.hw = hw or _hwcaps.detect()
        self.data = b""
        self.stamp = None
        self.new = False
        self.generator = None
        self.hwcaps_names = []      # extension section: index -> subdir name (None if bad)
        self._libs = []             # (flags, key, value, hwcap) in file order
        self._strings = 0           # base of string offsets
        self._strsize = 0
        self._memo = {}
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                self.data = f.read()
            self.stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return
        self._parse()

    # ------------------------------------------------------------ parsing
    def _parse(self):
        d = self.data
        size = len(d)
        if size > _NEW_HDR.size and d.startswith(NEW_MAGIC):
            nlibs = _NEW_HDR.unpack_from(d, 0)[1]
            if (size - _NEW_HDR.size) // _NEW_ENTRY.size >= nlibs:
                self._load_new(0)
            return
        if size > _OLD_HDR.size and d.startswith(OLD_MAGIC):
            nlibs = _OLD_HDR.unpack_from(d, 0)[1]
            if (size - _OLD_HDR.size) // _OLD_ENTRY.size < nlibs:
                return
            off = _OLD_HDR.size + nlibs * _OLD_ENTRY.size
            new_off = (off + 7) & ~7
            if size >= new_off + _NEW_HDR.size and d[new_off:new_off + len(NEW_MAGIC)] == NEW_MAGIC:
                self._load_new(new_off)
                return
            self._libs = [_OLD_ENTRY.unpack_from(d, _OLD_HDR.size + i * _OLD_ENTRY.size) + (None,)
                          for i in range(nlibs)]
            self._strings = off
            self._strsize = size - off

    def _load_new(self, base):
        d = self.data
        _, nlibs, _, flags, _, ext_off, _ = _NEW_HDR.unpack_from(d, base)
        # endianness: 0 = unknown, else the low bits must say little-endian (2)
        if flags != 0 and (flags & 3) != 2:
            return
        self.new = True
        first = base + _NEW_HDR.size
        self._libs = [(f, k, v, h) for f, k, v, _, h in
                      (_NEW_ENTRY.unpack_from(d, first + i * _NEW_ENTRY.size) for i in range(nlibs))]
        self._strings = base
        self._strsize = len(d)  # glibc passes the whole file size here
        self._load_extensions(ext_off)

    def _load_extensions(self, ext_off):
        d = self.data
        size = len(d)
        if ext_off == 0 or ext_off % 4 or ext_off + 8 > size:
            return
        magic, count = struct.unpack_from("<II", d, ext_off)
        if magic != _EXT_MAGIC or ext_off + 8 + count * 16 > size:
            return
        for i in range(count):
            tag, _, off, length = struct.unpack_from("<IIII", d, ext_off + 8 + i * 16)
            if off + length > size:
                return
            if tag == EXT_GENERATOR:
                self.generator = d[off:off + length].decode("utf-8", "replace")
            elif tag == EXT_GLIBC_HWCAPS and length and off % 4 == 0 and length % 4 == 0:
                idx = struct.unpack_from(f"<{length // 4}I", d, off)
                self.hwcaps_names = [self._cstr(i).decode("utf-8", "replace") if i < size else None for i in idx]

    def _cstr(self, off):
        end = self.data.find(b"\0", off)
        return self.data[off:end if end >= 0 else len(self.data)]

    def _str(self, off):
        return self._cstr(self._strings + off)

    # ------------------------------------------------------------ queries
    @property
    def entries(self):
        """[(name, path, flags, hwcap)] in file order (for listings and tests)."""
        return [(self._str(k).decode("utf-8", "surrogateescape"), self._str(v).decode("utf-8", "surrogateescape"), f, h)
                for f, k, v, h in self._libs]

    def _priority(self, hwcap):
        i = hwcap & 0xFFFFFFFF
        if i >= len(self.hwcaps_names) or self.hwcaps_names[i] is None:
            return 0
        return self.hw.priority(self.hwcaps_names[i])

    def lookup(self, name):
        """The path ld.so takes from the cache for `name`, or None."""
        try:
            return self._memo[name]
        except KeyError:
            pass
        b = os.fsencode(name)
        r = self._search(b)
        r = None if r is None else os.fsdecode(r)
        self._memo[name] = r
        return r

    def _search(self, name):
        libs, strsize = self._libs, self._strsize
        if not libs:
            return None
        hw = self.hw
        pbit = hw.platform_bit
        platform = pbit if pbit is not None else (1 << 64) - 1
        exclude = ~((hw.hwcap & hw.hwcap_mask) | _hwcaps.HWCAP_PLATFORM_MASK | _TLS_MASK) & ((1 << 64) - 1)
        left, right = 0, len(libs) - 1
        best = None
        best_priority = 0
        while left <= right:
            middle = (left + right) // 2
            key = libs[middle][1]
            if key >= strsize:
                return None
            cmpres = libcmp(name, self._str(key))
            if cmpres == 0:
                left = middle
                while middle > 0:
                    key = libs[middle - 1][1]
                    if key >= strsize or libcmp(name, self._str(key)) != 0:
                        break
                    middle -= 1
                while middle <= right:
                    flags, key, value, hwcap = libs[middle]
                    middle += 1
                    if middle - 1 > left and (key >= strsize or libcmp(name, self._str(key)) != 0):
                        break
                    if flags != DEFAULT_ID or value >= strsize:
                        continue
                    named = False
                    if hwcap is not None:
                        named = ((hwcap >> 32) & ~ISA_LEVEL_MASK) == (HWCAP_EXTENSION >> 32)
                        if named:
                            level = 1 << ((hwcap >> 32) & ISA_LEVEL_MASK)
                            if level & hw.isa_1 != level:
                                continue
                        if not named and best is not None:
                            break
                        if hwcap & exclude and not named:
                            continue
                        if hwcap & _hwcaps.HWCAP_PLATFORM_MASK and hwcap & _hwcaps.HWCAP_PLATFORM_MASK != platform:
                            continue
                        if named:
                            prio = self._priority(hwcap)
                            if prio == 0:
                                continue
                            if best is None or prio < best_priority:
                                best_priority = prio
                            else:
                                continue
                    best = self._str(value)
                    if not named and flags == DEFAULT_ID:
                        break
                break
            if cmpres < 0:
                left = middle + 1
            else:
                right = middle - 1
        return best


_default = None


def default_cache(hw=None):
    """The system cache, re-read when /etc/ld.so.cache changes (ldconfig)."""
    global _default
    hw = hw or _hwcaps.detect()
    try:
        st = os.stat(LD_SO_CACHE)
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    if _default is None or _default.stamp != stamp or _default.hw != hw:
        _default = LdCache(LD_SO_CACHE, hw)
    return _default
