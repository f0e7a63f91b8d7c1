"""Pool images of real system libraries: identity, layout, and the
pre-relocated bytes checked against the same library as ld.so loaded it
into this very process (libz, through Python's zlib module)."""
import ctypes
import os
import struct
import zlib  # noqa: F401  (loads libz.so.1 through ld.so: our oracle)

import pytest

from loader import image as limage
from loader import resolve
from loader.elf import PF_W, PT_GNU_RELRO, ElfFile
from loader.localpool import LocalPool
from loader.imports import import_name
from loader.prerelocate import R_RELATIVE, bind_entries
from loader.stubs import STUB_SIZE, StubRegion, is_function_ref

LIBZ = "/lib/x86_64-linux-gnu/libz.so.1"


def mapped_base(path):
    """Load bias (link_map l_addr) of `path` as ld.so loaded it here."""
    handle = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)._handle
    lm = ctypes.c_void_p()
    libc = ctypes.CDLL(None)
    assert libc.dlinfo(ctypes.c_void_p(handle), 2, ctypes.byref(lm)) == 0   # RTLD_DI_LINKMAP
    return ctypes.c_uint64.from_address(lm.value).value


def test_key_is_content_not_path(tmp_path):
    a = ElfFile(LIBZ)
    b = ElfFile(os.path.realpath(LIBZ))
    assert limage.image_key(a) == limage.image_key(b)
    assert limage.build_id(a) and limage.image_key(a).endswith(limage.build_id(a))
    copy = tmp_path / "libz-copy.so"
    data = bytearray(open(LIBZ, "rb").read())
    copy.write_bytes(data)
    assert limage.image_key(ElfFile(copy)) == limage.image_key(a)
    data[-1] ^= 0xFF                      # one byte outside any segment
    other = tmp_path / "libz-other.so"
    other.write_bytes(data)
    assert limage.image_key(ElfFile(other)) != limage.image_key(a)


@pytest.mark.parametrize("path", [LIBZ, "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/bin/xz"])
def test_layout(path):
    elf = ElfFile(path)
    lay = limage.layout(elf)
    assert lay.lo % 4096 == 0 and lay.hi % 4096 == 0
    for s in elf.loads:
        assert lay.lo <= s.vaddr and s.vaddr + s.memsz <= lay.hi
    # glibc stubs live in the source's one stub region: an image is its span
    assert lay.pool_size == lay.map_size == lay.span


def canonical(path):
    res = resolve.resolve_library(path, env={})
    return res.objects


@pytest.fixture(scope="module")
def libz_image():
    elf = ElfFile(LIBZ)
    lay = limage.layout(elf)
    base = 0x3555_0000_0000
    buf = bytearray(lay.pool_size)
    scope = [(elf, base, False)] + [(o.elf, 0, True) for o in canonical(LIBZ)[1:]]
    stubs = StubRegion(0x3554_0000_0000, 0)
    info = limage.build_image(elf, base, scope, buf, stubs=stubs)
    return elf, lay, base, bytes(buf), info, scope, stubs


def test_image_matches_ldso_copy(libz_image):
    """Every word ld.so relocated in libz, rebased, equals ours; words bound
    into glibc are stubs (JUMP_SLOT) or left for the plan."""
    elf, lay, base, img, info, scope, region = libz_image
    theirs_base = mapped_base(LIBZ)
    b = bind_entries(scope, 0)
    checked = nstubs = 0
    for r in range(b.count):
        off = b.addr[r] - base
        ours = struct.unpack_from("<Q", img, off - lay.lo)[0]
        theirs = ctypes.c_uint64.from_address(theirs_base + off).value
        t = b.rtype[r]
        if t == R_RELATIVE:
            assert ours - base == theirs - theirs_base, hex(off)
            checked += 1
        elif b.target[r] >= 0 and scope[b.target[r]][2] and is_function_ref(elf, b, r, {}, scope):
            k = info.stubs[import_name(elf, b.symidx[r])]
            assert ours == region.stub_addr(k)
            nstubs += 1
    for addr in b.relr:
        off = addr - base
        ours = struct.unpack_from("<Q", img, off - lay.lo)[0]
        theirs = ctypes.c_uint64.from_address(theirs_base + off).value
        assert ours - base == theirs - theirs_base
    assert checked > 20 and nstubs > 10
    # read-only segments: byte for byte what ld.so mapped
    for s in elf.loads:
        if not s.flags & PF_W:
            ours = img[s.vaddr - lay.lo:s.vaddr - lay.lo + s.filesz]
            theirs = ctypes.string_at(theirs_base + s.vaddr, s.filesz)
            assert ours == theirs


def test_stubs_jump_through_their_slots(libz_image):
    elf, lay, base, img, info, _, stubs = libz_image
    assert info.stubs, "libz imports glibc functions through its PLT"
    code = stubs.content()
    assert len(code) == stubs.size
    for (name, ver), k in info.stubs.items():
        assert stubs.index(name, ver) == k
        c = code[k * STUB_SIZE:(k + 1) * STUB_SIZE]
        assert c[:2] == b"\xff\x25" and c[6:] == b"\xcc\xcc"
        disp = struct.unpack_from("<i", c, 2)[0]
        assert stubs.stub_addr(k) + 6 + disp == stubs.slot_addr(k)
        assert ver is None or ver.startswith("GLIBC_")
    # first seen, first numbered; the same name and version, the same slot
    assert sorted(info.stubs.values()) == list(range(len(info.stubs)))


def test_shared_pages_and_determinism(libz_image):
    elf, lay, base, img, info, scope, stubs = libz_image
    shared = limage.shared_pages(info)
    relro = elf.segment(PT_GNU_RELRO)
    b = bind_entries(scope, 0)
    per_process = {(b.addr[r] - base - lay.lo) >> 12 for r in range(b.count)
                   if b.target[r] >= 0 and scope[b.target[r]][2] and not is_function_ref(elf, b, r, {}, scope)}
    relro_pages = set(range((relro.vaddr - lay.lo) >> 12, (relro.vaddr + relro.memsz - lay.lo) >> 12))
    # GOT pages are shareable unless a reference into glibc that is not a
    # plain function address (data, a weak reference) needs a per-process
    # value there
    assert relro_pages - per_process <= shared
    assert not per_process & shared
    text = {p for s in elf.loads if not s.flags & PF_W
            for p in range((s.vaddr - lay.lo) >> 12, (s.vaddr + s.filesz - lay.lo + 4095) >> 12)}
    assert text <= shared
    again = bytearray(lay.pool_size)
    limage.build_image(elf, base, scope, again, stubs=stubs)
    assert bytes(again) == img
    moved = bytearray(lay.pool_size)
    limage.build_image(elf, base + 0x10_0000, [(elf, base + 0x10_0000, False)] + scope[1:], moved, stubs=stubs)
    text = [s for s in elf.loads if s.flags & 1][0]
    assert moved[text.vaddr - lay.lo:text.vaddr - lay.lo + text.filesz] == \
        img[text.vaddr - lay.lo:text.vaddr - lay.lo + text.filesz]
    assert bytes(moved) != img


def test_local_pool_places_scope_first():
    with LocalPool() as pool:
        objs = canonical("/lib/x86_64-linux-gnu/libcrypto.so.3")
        p = pool.place(objs[0])
        assert p is pool.place(objs[0])
        deps = [pool.place(o) for o in objs[1:] if not o.is_glibc]
        ranges = sorted((x.map_start, x.map_end) for x in [p] + deps)
        for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
            assert a1 <= b0
        for x in [p] + deps:
            assert x.base % 4096 == 0 and len(pool.image_bytes(x)) == x.size
            with pytest.raises(TypeError):
                pool.image_bytes(x)[0] = 0
