# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Typed scans of ELF relocation tables.

Inputs are zero-copy 'Q' views of the file (loader.elf slices them out of
the mmap); outputs are array.array objects, one per column, so consumers
get typed buffers and never a Python object per relocation. Nothing here
knows about files or error classes: a malformed table is reported as a
ValueError with a short reason, which the ELF model turns into its own
error naming the file.
"""
from cpython cimport array
import array
from libc.stdint cimport uint64_t, uint32_t, int64_t

cdef extern from *:
    int __builtin_popcountll(unsigned long long) nogil


cdef array.array _Q = array.array("Q")
cdef array.array _I = array.array("I")
cdef array.array _q = array.array("q")


def decode_rela(const unsigned long long[::1] words):
    """Split Elf64_Rela triples (r_offset, r_info, r_addend) into columns.

    Returns (offset 'Q', type 'I', sym 'I', addend 'q'); len(words) must be a
    multiple of 3."""
    cdef Py_ssize_t n = words.shape[0] // 3, i
    if words.shape[0] % 3:
        raise ValueError("relocation table size is not a multiple of the entry size")
    cdef array.array off = array.clone(_Q, n, False)
    cdef array.array typ = array.clone(_I, n, False)
    cdef array.array sym = array.clone(_I, n, False)
    cdef array.array add = array.clone(_q, n, False)
    cdef unsigned long long *po = <unsigned long long *>off.data.as_voidptr
    cdef uint32_t *pt = <uint32_t *>typ.data.as_voidptr
    cdef uint32_t *ps = <uint32_t *>sym.data.as_voidptr
    cdef long long *pa = <long long *>add.data.as_voidptr
    cdef unsigned long long info
    with nogil:
        for i in range(n):
            po[i] = words[3 * i]
            info = words[3 * i + 1]
            pt[i] = <uint32_t>(info & 0xFFFFFFFFULL)
            ps[i] = <uint32_t>(info >> 32)
            pa[i] = <long long>words[3 * i + 2]
    return off, typ, sym, add


cdef Py_ssize_t _relr_count(const unsigned long long[::1] words) nogil:
    """Number of addresses a DT_RELR table encodes; -1 when a bitmap comes
    before any address (glibc would then write through a null pointer)."""
    cdef Py_ssize_t i, n = 0
    cdef unsigned long long e
    cdef bint have_base = False
    for i in range(words.shape[0]):
        e = words[i]
        if e & 1:
            if not have_base:
                return -1
            # bit 0 is the bitmap marker, not an address
            n += __builtin_popcountll(e) - 1
        else:
            have_base = True
            n += 1
    return n


def relr_count(const unsigned long long[::1] words):
    """Number of addresses encoded by a DT_RELR table (ValueError if malformed)."""
    cdef Py_ssize_t n = _relr_count(words)
    if n < 0:
        raise ValueError("DT_RELR bitmap before any address")
    return n


def decode_relr(const unsigned long long[::1] words, Py_ssize_t limit=-1):
    """Expand DT_RELR into an array 'Q' of link-time addresses, in table order.

    `limit` bounds the number of addresses (a hostile table can encode 63 per
    word); over it, ValueError."""
    cdef Py_ssize_t n
    with nogil:
        n = _relr_count(words)
    if n < 0:
        raise ValueError("DT_RELR bitmap before any address")
    if limit >= 0 and n > limit:
        raise ValueError(f"DT_RELR encodes {n} addresses, more than the image can hold ({limit})")
    cdef array.array out = array.clone(_Q, n, False)
    cdef unsigned long long *p = <unsigned long long *>out.data.as_voidptr
    cdef Py_ssize_t i, k = 0
    cdef unsigned long long e, where = 0, a
    with nogil:
        for i in range(words.shape[0]):
            e = words[i]
            if (e & 1) == 0:
                p[k] = e
                k += 1
                where = e + 8
            else:
                a = where
                e >>= 1
                while e:
                    if e & 1:
                        p[k] = a
                        k += 1
                    e >>= 1
                    a += 8
                where += 63 * 8
    return out


def type_histogram(const uint32_t[::1] types):
    """{relocation type: count} over a type column."""
    cdef Py_ssize_t i, n = types.shape[0]
    cdef uint32_t t
    cdef Py_ssize_t small[64]
    cdef dict out = {}
    for i in range(64):
        small[i] = 0
    for i in range(n):
        t = types[i]
        if t < 64:
            small[t] += 1
        else:
            out[t] = out.get(t, 0) + 1
    for i in range(64):
        if small[i]:
            out[i] = small[i]
    return dict(sorted(out.items()))


def u32_range(const uint32_t[::1] values):
    """(smallest non-zero value, largest value) of a 'I' column; zeros when
    the column is empty or all zero (0 = empty bucket / end of chain)."""
    cdef Py_ssize_t i
    cdef uint32_t lo = 0, hi = 0, v
    with nogil:
        for i in range(values.shape[0]):
            v = values[i]
            if v > hi:
                hi = v
            if v and (lo == 0 or v < lo):
                lo = v
    return lo, hi


def first_odd(const uint32_t[::1] values, Py_ssize_t start):
    """Index of the first odd value at or after `start` (a GNU hash chain's
    terminator), or -1."""
    cdef Py_ssize_t i
    if start < 0:
        return -1
    for i in range(start, values.shape[0]):
        if values[i] & 1:
            return i
    return -1


cdef inline unsigned long long _reloc_width(uint32_t t) nogil:
    # bytes written at r_offset by each x86-64 relocation type (psABI table)
    if t == 0 or t == 35:          # NONE, TLSDESC_CALL: nothing written
        return 0
    if t == 36:                    # TLSDESC: two words
        return 16
    if t == 12 or t == 13:
        return 2
    if t == 14 or t == 15:
        return 1
    if (t == 2 or t == 3 or t == 4 or t == 9 or t == 10 or t == 11 or
            (19 <= t <= 23) or t == 26 or t == 32 or t == 34 or t == 41 or t == 42):
        return 4
    return 8


def first_outside(const unsigned long long[::1] addrs, unsigned long long lo,
                  unsigned long long hi, unsigned long long width=8):
    """Index of the first address whose `width` bytes are not all inside
    [lo, hi), or -1."""
    cdef Py_ssize_t i, n = addrs.shape[0], bad = -1
    with nogil:
        for i in range(n):
            if addrs[i] < lo or addrs[i] > hi or hi - addrs[i] < width:
                bad = i
                break
    return bad


def first_outside_reloc(const unsigned long long[::1] offsets, const uint32_t[::1] types,
                        unsigned long long lo, unsigned long long hi):
    """Index of the first relocation whose written bytes (by its type) are
    not all inside [lo, hi), or -1."""
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef Py_ssize_t bad = -1
    cdef unsigned long long w, a
    if types.shape[0] != n:
        raise ValueError("type column length differs from offset column")
    with nogil:
        for i in range(n):
            w = _reloc_width(types[i])
            if w == 0:
                continue
            a = offsets[i]
            if a < lo or a > hi or hi - a < w:
                bad = i
                break
    return bad


def version():
    return 2
