# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Applying a plan's ldp_fix records inside the running process (what the
launcher's fixup loop does, for loader.open), and a dynamic TLS provider
for objects mapped that way.

apply_fixups(fixups, imports, modids, first_index) -> 0, or raises
    fixups: the plan's fixup records of one object (bytes-like, 32 bytes
    each, plan.h's struct ldp_fix); imports 'Q': address of each plan
    import (0 for a missing weak one); modids 'Q': tls_modid of each plan
    object (index = sym - first_index).  Pages written must be writable.
    Static TLS records (TPOFF, TLSDESC, GLIBC_TPOFF) cannot be honoured in
    a process that was not started by ldpool-exec: LdpoolError.

register_tls(modid, image, filesz, memsz, align) / unregister_tls(modid)
tls_get_addr_address() -> address of ldpool's __tls_get_addr: per-thread
    blocks of registered modules, allocated and initialised on first use
    in each thread (freed by a pthread key destructor at thread exit).
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, int32_t, uintptr_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport free

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

from loader.errors import LdpoolError

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    int pthread_key_create(pthread_key_t *key, void (*destructor)(void *))
    int pthread_key_delete(pthread_key_t key)
    void *pthread_getspecific(pthread_key_t key)
    int pthread_setspecific(pthread_key_t key, const void *value)

cdef packed struct ldp_fix:
    uint64_t addr
    uint32_t type
    uint32_t sym
    int64_t addend
    uint64_t aux

ctypedef struct tls_index:
    uint64_t ti_module
    uint64_t ti_offset

ctypedef struct tls_mod:
    const uint8_t *image
    uint64_t filesz, memsz, align
    pthread_key_t key
    int used

cdef enum:
    MAXMOD = 8192
cdef tls_mod mods[MAXMOD]

cdef enum:
    FIX_ABS64 = 1
    FIX_SYM64 = 2
    FIX_SYM_PC32 = 3
    FIX_SYM32 = 4
    FIX_SYM32S = 5
    FIX_IRELATIVE = 6
    FIX_DTPMOD = 7
    FIX_TPOFF = 8
    FIX_TLSDESC = 9
    FIX_COPY = 10
    FIX_GLIBC_TPOFF = 11

ctypedef uint64_t (*resolver_t)() noexcept nogil


cdef void free_block(void *p) noexcept nogil:
    free(p)


cdef void *ldp_tls_get_addr(tls_index *ti) noexcept nogil:
    cdef uint64_t m = ti.ti_module
    if m >= MAXMOD or not mods[m].used:
        return NULL
    cdef tls_mod *t = &mods[m]
    cdef uint8_t *block = <uint8_t *>pthread_getspecific(t.key)
    cdef uint64_t size, align
    if block == NULL:
        align = t.align if t.align > 16 else 16
        size = (t.memsz + align - 1) // align * align
        block = <uint8_t *>aligned_alloc(align, size if size else align)
        if block == NULL:
            return NULL
        memcpy(block, t.image, t.filesz)
        memset(block + t.filesz, 0, size - t.filesz)
        pthread_setspecific(t.key, block)
    return block + ti.ti_offset


def tls_get_addr_address():
    return <uintptr_t>&ldp_tls_get_addr


def register_tls(uint64_t modid, uint64_t image, uint64_t filesz, uint64_t memsz, uint64_t align):
    if modid == 0 or modid >= MAXMOD or mods[modid].used:
        raise LdpoolError(f"TLS module id {modid} unavailable")
    if pthread_key_create(&mods[modid].key, free_block) != 0:
        raise LdpoolError("out of thread-specific keys for TLS modules")
    mods[modid].image = <const uint8_t *>image
    mods[modid].filesz, mods[modid].memsz, mods[modid].align = filesz, memsz, align
    mods[modid].used = 1


def unregister_tls(uint64_t modid):
    """Forget a module (its blocks in other threads leak, as after dlclose)."""
    cdef void *mine
    if modid < MAXMOD and mods[modid].used:
        mine = pthread_getspecific(mods[modid].key)
        if mine != NULL:
            pthread_setspecific(mods[modid].key, NULL)
            free(mine)
        pthread_key_delete(mods[modid].key)
        mods[modid].used = 0


def apply_fixups(const uint8_t[::1] fixups, const uint64_t[::1] imports, const uint64_t[::1] modids,
                 uint32_t first_index):
    cdef Py_ssize_t n = fixups.shape[0] // sizeof(ldp_fix), i
    cdef const ldp_fix *f
    cdef uint64_t s, v
    cdef int64_t sv
    cdef int bad = -1, badtype = 0
    if fixups.shape[0] % sizeof(ldp_fix):
        raise ValueError("fixup table size is not a multiple of the record size")
    if n == 0:
        return 0
    with nogil:
        for i in range(n):
            f = (<const ldp_fix *>&fixups[0]) + i
            s = 0
            if f.type == FIX_SYM64 or f.type == FIX_SYM_PC32 or f.type == FIX_SYM32 or f.type == FIX_SYM32S \
                    or (f.type == FIX_COPY and f.sym != 0xFFFFFFFFu):
                if f.sym >= imports.shape[0]:
                    bad = <int>i
                    break
                s = imports[f.sym]
            if f.type == FIX_ABS64:
                (<uint64_t *>f.addr)[0] = <uint64_t>f.addend
            elif f.type == FIX_SYM64:
                (<uint64_t *>f.addr)[0] = s + <uint64_t>f.addend
            elif f.type == FIX_SYM_PC32 or f.type == FIX_SYM32 or f.type == FIX_SYM32S:
                v = s + <uint64_t>f.addend
                if f.type == FIX_SYM_PC32:
                    v -= f.addr
                sv = <int64_t>v
                if (f.type == FIX_SYM32 and v > 0xFFFFFFFFu) or \
                        (f.type != FIX_SYM32 and (sv < -2147483648 or sv > 2147483647)):
                    bad = <int>i
                    break
                (<uint32_t *>f.addr)[0] = <uint32_t>v
            elif f.type == FIX_IRELATIVE:
                (<uint64_t *>f.addr)[0] = (<resolver_t>(<uintptr_t>f.addend))()
            elif f.type == FIX_DTPMOD:
                if f.sym < first_index or f.sym - first_index >= modids.shape[0]:
                    bad = <int>i
                    break
                (<uint64_t *>f.addr)[0] = modids[f.sym - first_index]
            elif f.type == FIX_COPY:
                memcpy(<void *>f.addr, <const void *>(s if f.sym != 0xFFFFFFFFu else f.aux), <size_t>f.addend)
            else:
                bad = <int>i
                badtype = f.type
                break
    if bad >= 0:
        f = (<const ldp_fix *>&fixups[0]) + bad
        if badtype in (FIX_TPOFF, FIX_TLSDESC, FIX_GLIBC_TPOFF):
            raise LdpoolError("the object uses static TLS, which only ldpool-exec can provide")
        raise LdpoolError(f"fixup {bad} (type {f.type}) at {f.addr:#x} cannot be applied")
    return 0


def split_by_target(const int32_t[::1] target, const uint8_t[::1] glibc):
    """For a Bindings' target column and one byte per scope entry (1 =
    glibc's family): (mask 'B': 1 where the relocation does not bind into
    glibc, indices 'I' of those that do)."""
    import array
    cdef Py_ssize_t n = target.shape[0], i, k = 0
    mask = array.array("B", bytes(n))
    idx = array.array("I", bytes(4 * n))
    cdef uint8_t[::1] m = mask
    cdef uint32_t[::1] ix = idx
    cdef int32_t t
    with nogil:
        for i in range(n):
            t = target[i]
            if t >= 0 and t < glibc.shape[0] and glibc[t]:
                ix[k] = <uint32_t>i
                k += 1
            else:
                m[i] = 1
    return mask, idx[:k]
