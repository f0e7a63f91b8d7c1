# Included by reloc.pyx: computing and writing relocation values (apply,
# compare).  Kept apart so each file reads in one sitting.

cdef enum:
    V_WORD64 = 0
    V_WORD32 = 1
    V_TLSDESC = 2
    V_NOTHING = 3
    V_DEFER = -1
    V_OVERFLOW = -2


cdef struct Ctx:
    const uint32_t *typ
    const int32_t *tgt
    const uint64_t *val
    const int64_t *add
    const uint64_t *size
    const uint64_t *addr
    const uint8_t *flg
    uint64_t l_addr
    const int64_t *modid
    const int64_t *tpoff
    Py_ssize_t ntls
    uint64_t desc


cdef inline int compute(const Ctx *c, Py_ssize_t k, uint64_t *out, uint64_t *out2) noexcept nogil:
    """The value glibc would store for relocation k (V_* says its shape)."""
    cdef uint32_t t = c.typ[k]
    cdef int32_t tg
    cdef uint64_t S
    cdef int64_t v
    # the common mix first (bionic's fast path): RELATIVE, GLOB_DAT, JUMP_SLOT, 64
    if t == R_RELATIVE:
        out[0] = c.l_addr + <uint64_t>c.add[k]
        return V_WORD64
    tg = c.tgt[k]
    if t == R_NONE:
        return V_NOTHING
    if t == R_IRELATIVE or t == R_COPY or tg == -3:
        return V_DEFER
    S = c.val[k]
    if (c.flg[k] & 4) and not is_tls_type(t):
        return V_DEFER          # IFUNC: the resolver runs in the process
    if t == R_GLOB_DAT or t == R_JUMP_SLOT:
        out[0] = S
        return V_WORD64
    if t == R_64:
        out[0] = S + <uint64_t>c.add[k]
        return V_WORD64
    if t == R_PC64:
        out[0] = S + <uint64_t>c.add[k] - c.addr[k]
        return V_WORD64
    if t == R_32:
        out[0] = S + <uint64_t>c.add[k]
        return V_WORD32 if out[0] <= 0xffffffffu else V_OVERFLOW
    if t == R_32S or t == R_PC32:
        v = <int64_t>(S + <uint64_t>c.add[k] - (c.addr[k] if t == R_PC32 else 0))
        out[0] = <uint64_t>v & 0xffffffffu
        return V_WORD32 if v == <int64_t><int32_t>v else V_OVERFLOW
    if t == R_SIZE64:
        out[0] = c.size[k] + <uint64_t>c.add[k]
        return V_WORD64
    if t == R_SIZE32:
        out[0] = (c.size[k] + <uint64_t>c.add[k]) & 0xffffffffu
        return V_WORD32
    # TLS: an undefined weak reference leaves the word alone (glibc)
    if tg < 0:
        return V_DEFER if t == R_TLSDESC else V_NOTHING
    if t == R_DTPOFF64:
        out[0] = S + <uint64_t>c.add[k]
        return V_WORD64
    if tg >= c.ntls:
        return V_DEFER
    if t == R_DTPMOD64:
        if c.modid == NULL:
            return V_DEFER
        out[0] = <uint64_t>c.modid[tg]
        return V_WORD64
    if c.tpoff == NULL:
        return V_DEFER
    if t == R_TPOFF64:
        out[0] = <uint64_t>c.tpoff[tg] + S + <uint64_t>c.add[k]
        return V_WORD64
    if t == R_TLSDESC and c.desc != 0:
        out[0] = c.desc
        out2[0] = <uint64_t>c.tpoff[tg] + S + <uint64_t>c.add[k]
        return V_TLSDESC
    return V_DEFER


cdef object _ctx(Ctx *c, b, mask, tls_modid, tls_tpoff, uint64_t desc):
    """Fill c from a Bindings; returns the objects that keep its buffers alive."""
    cdef array.array a
    keep = [b.rtype, b.target, b.value, b.addend, b.symsize, b.addr, b.flags]
    c.typ = <uint32_t *>(<array.array>b.rtype).data.as_uints
    c.tgt = <int32_t *>(<array.array>b.target).data.as_ints
    c.val = <uint64_t *>(<array.array>b.value).data.as_ulonglongs
    c.add = <int64_t *>(<array.array>b.addend).data.as_longlongs
    c.size = <uint64_t *>(<array.array>b.symsize).data.as_ulonglongs
    c.addr = <uint64_t *>(<array.array>b.addr).data.as_ulonglongs
    c.flg = <uint8_t *>(<array.array>b.flags).data.as_uchars
    c.l_addr = b.l_addr
    c.desc = desc
    c.modid = c.tpoff = NULL
    c.ntls = 0
    if tls_modid is not None and tls_tpoff is not None:
        if len(tls_modid) != len(tls_tpoff):
            raise ValueError("tls_modid and tls_tpoff differ in length")
        m = pyarray.array('q', tls_modid)
        p = pyarray.array('q', tls_tpoff)
        keep += [m, p]
        c.modid = <int64_t *>(<array.array>m).data.as_longlongs
        c.tpoff = <int64_t *>(<array.array>p).data.as_longlongs
        c.ntls = len(m)
    if mask is not None:
        if len(mask) != b.count:
            raise ValueError(f"mask has {len(mask)} entries for {b.count} relocations")
    return keep


cdef _range_error(b, Py_ssize_t k, image_addr, Py_ssize_t n):
    raise LdpoolError(f"{b.path}: relocation {rtype_name(b.rtype[k])} at {b.addr[k]:#x} "
                      f"is outside the image [{image_addr:#x}, {image_addr + n:#x})")


cdef _overflow_error(b, Py_ssize_t k, scope_elf):
    name = scope_elf.symbol(b.symidx[k]).name if b.symidx[k] else "(none)"
    raise LdpoolError(f"{b.path}: symbol `{name}' causes overflow in {rtype_name(b.rtype[k])} relocation")


def apply(uint8_t[::1] image, uint64_t image_addr, b, mask=None, tls_modid=None,
          tls_tpoff=None, uint64_t tlsdesc_resolver=0, bint relr=True):
    cdef Ctx c
    keep = _ctx(&c, b, mask, tls_modid, tls_tpoff, tlsdesc_resolver)
    cdef const uint8_t[::1] m
    cdef bint use_mask = mask is not None
    if use_mask:
        m = mask
    cdef Py_ssize_t n = b.count, size = image.shape[0], k, nd = 0, err = -1, ovf = -1
    cdef uint8_t *img = &image[0] if size else NULL
    cdef array.array deferred = array.clone(_u32, n, False)
    cdef uint32_t *dp = <uint32_t *>deferred.data.as_uints
    cdef uint64_t off, w, w2
    cdef uint32_t w32
    cdef int r
    cdef const uint64_t[::1] rl = b.relr
    with nogil:
        for k in range(n):
            if use_mask and not m[k]:
                continue
            r = compute(&c, k, &w, &w2)
            if r == V_NOTHING:
                continue
            if r == V_DEFER:
                dp[nd] = <uint32_t>k
                nd += 1
                continue
            if r == V_OVERFLOW:
                ovf = k
                break
            off = c.addr[k] - image_addr
            if c.addr[k] < image_addr or off + (4 if r == V_WORD32 else 16 if r == V_TLSDESC else 8) > <uint64_t>size:
                err = k
                break
            if r == V_WORD64:
                memcpy(img + off, &w, 8)
            elif r == V_WORD32:
                w32 = <uint32_t>w
                memcpy(img + off, &w32, 4)
            else:
                memcpy(img + off, &w, 8)
                memcpy(img + off + 8, &w2, 8)
        if relr and err < 0 and ovf < 0:
            for k in range(rl.shape[0]):
                off = rl[k] - image_addr
                if rl[k] < image_addr or off + 8 > <uint64_t>size:
                    err = -2 - k
                    break
                memcpy(&w, img + off, 8)
                w += c.l_addr
                memcpy(img + off, &w, 8)
    if err <= -2:
        raise LdpoolError(f"{b.path}: RELR relocation at {rl[-2 - err]:#x} is outside the image")
    if err >= 0:
        _range_error(b, err, image_addr, size)
    if ovf >= 0:
        from loader.elf import ElfFile
        with ElfFile(b.path) as e:
            _overflow_error(b, ovf, e)
    array.resize(deferred, nd)
    return deferred


def compare(const uint8_t[::1] image, uint64_t image_addr, b, mask=None, tls_modid=None,
            tls_tpoff=None, uint64_t tlsdesc_resolver=0):
    cdef Ctx c
    keep = _ctx(&c, b, mask, tls_modid, tls_tpoff, tlsdesc_resolver)
    cdef const uint8_t[::1] m
    cdef bint use_mask = mask is not None
    if use_mask:
        m = mask
    cdef Py_ssize_t n = b.count, size = image.shape[0], k, nd = 0, ndiff = 0, err = -1, ovf = -1
    cdef const uint8_t *img = &image[0] if size else NULL
    cdef array.array deferred = array.clone(_u32, n, False)
    cdef array.array differ = array.clone(_u32, n, False)
    cdef array.array values = array.clone(_u64, n, False)
    cdef uint32_t *dp = <uint32_t *>deferred.data.as_uints
    cdef uint32_t *fp = <uint32_t *>differ.data.as_uints
    cdef uint64_t *vp = <uint64_t *>values.data.as_ulonglongs
    cdef uint64_t off, w, w2, cur, cur2
    cdef uint32_t c32
    cdef int r
    with nogil:
        for k in range(n):
            if use_mask and not m[k]:
                continue
            r = compute(&c, k, &w, &w2)
            if r == V_NOTHING:
                continue
            if r == V_DEFER:
                dp[nd] = <uint32_t>k
                nd += 1
                continue
            if r == V_OVERFLOW:
                ovf = k
                break
            off = c.addr[k] - image_addr
            if c.addr[k] < image_addr or off + (4 if r == V_WORD32 else 16 if r == V_TLSDESC else 8) > <uint64_t>size:
                err = k
                break
            if r == V_WORD32:
                memcpy(&c32, img + off, 4)
                if c32 == <uint32_t>w:
                    continue
            elif r == V_WORD64:
                memcpy(&cur, img + off, 8)
                if cur == w:
                    continue
            else:
                memcpy(&cur, img + off, 8)
                memcpy(&cur2, img + off + 8, 8)
                if cur == w and cur2 == w2:
                    continue
                w = w2
            fp[ndiff] = <uint32_t>k
            vp[ndiff] = w
            ndiff += 1
    if err >= 0:
        _range_error(b, err, image_addr, size)
    if ovf >= 0:
        from loader.elf import ElfFile
        with ElfFile(b.path) as e:
            _overflow_error(b, ovf, e)
    array.resize(deferred, nd)
    array.resize(differ, ndiff)
    array.resize(values, ndiff)
    return differ, values, deferred


def pages_touched(b, uint64_t image_addr, Py_ssize_t size, select=None, page_size=4096):
    """'B' per page of the image [image_addr, image_addr+size): 1 where a
    selected relocation (`select` 'B' per relocation, None = all; e.g. the
    ones left to per-process fixups) writes any byte of that page.  Pages
    with 0 stay byte-identical to the pre-relocated image: shareable."""
    cdef Py_ssize_t n = b.count, k, npages = (size + page_size - 1) // page_size
    cdef uint64_t ps = page_size, off, first, last, p
    cdef const uint8_t[::1] m
    cdef bint use = select is not None
    if use:
        m = select
        if m.shape[0] != n:
            raise ValueError(f"select has {m.shape[0]} entries for {n} relocations")
    cdef array.array out = array.clone(_u8, npages, True)
    cdef uint8_t *o = <uint8_t *>out.data.as_uchars
    cdef const uint64_t *addr = <uint64_t *>(<array.array>b.addr).data.as_ulonglongs
    cdef const uint32_t *typ = <uint32_t *>(<array.array>b.rtype).data.as_uints
    cdef uint32_t t
    with nogil:
        for k in range(n):
            if use and not m[k]:
                continue
            t = typ[k]
            if t == R_NONE or addr[k] < image_addr:
                continue
            off = addr[k] - image_addr
            first = off // ps
            last = (off + (4 if t == R_PC32 or t == R_32 or t == R_32S or t == R_SIZE32
                           else 16 if t == R_TLSDESC else 8) - 1) // ps
            p = first
            while p <= last and p < <uint64_t>npages:
                o[p] = 1
                p += 1
    return out


def lookup_keys(b):
    """'Q' keys (symidx << 32 | target << 1 | protected) of the relocations
    bound through a scope lookup (F_LOOKUP): what LD_DEBUG=bindings prints,
    before de-duplication."""
    cdef Py_ssize_t n = b.count, k, m = 0
    cdef const uint8_t *flg = <uint8_t *>(<array.array>b.flags).data.as_uchars
    cdef const uint32_t *sym = <uint32_t *>(<array.array>b.symidx).data.as_uints
    cdef const int32_t *tgt = <int32_t *>(<array.array>b.target).data.as_ints
    cdef array.array out = array.clone(_u64, n, False)
    cdef uint64_t *o = <uint64_t *>out.data.as_ulonglongs
    with nogil:
        for k in range(n):
            if flg[k] & 1:
                o[m] = (<uint64_t>sym[k] << 32) | (<uint64_t><uint32_t>tgt[k] << 1) | ((flg[k] >> 1) & 1)
                m += 1
    array.resize(out, m)
    return out
