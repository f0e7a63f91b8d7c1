"""Mode-1 relocation against a real oracle: what ld.so wrote in a live process.

`cat` is started with LD_BIND_NOW=1 and libz, libstdc++ and libcrypto
preloaded; once it echoes a line, ld.so has relocated everything.  For each
library we bind it in the same scope (every object at its live address, glibc
included), apply the relocations to an image built from the file at the same
load base, and compare every relocated word (RELA, JMPREL, RELR) with
/proc/PID/mem.  TLS offsets and module ids are unknown to us, so they are
derived from one live word per module and must then explain all others.
"""
import array
import os
import subprocess

import pytest

from engine_support import file_image, live_check, live_l_addrs, read_relocated, resolve, tls_tables
from loader.errors import LdpoolError
from loader.scope import Scope
from _native import reloc

LIBS = ["libz.so.1", "libstdc++.so.6", "libcrypto.so.3", "libLLVM-14.so.1"]
CAT = "/usr/bin/cat"


@pytest.fixture(scope="module")
def live():
    env = dict(os.environ, LD_BIND_NOW="1", LD_PRELOAD=":".join(LIBS))
    p = subprocess.Popen([CAT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        p.stdin.write(b"ready\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"ready\n"
        res = resolve(CAT, preload=LIBS, env={k: v for k, v in env.items() if k != "LD_PRELOAD"})
        objs = res.objects
        l_addrs = live_l_addrs(p.pid, objs)
        scope = Scope([(o.elf, a, o.is_glibc) for o, a in zip(objs, l_addrs)])
        yield p.pid, objs, scope
    finally:
        p.kill()
        p.wait()


# libc's writable .data changes once the program runs (setlocale rewrites
# its locale pointers), so for libc only the RELRO words are compared.
@pytest.mark.parametrize("soname", LIBS + ["libc.so.6"])
def test_apply_matches_live_process(live, soname):
    pid, objs, scope = live
    i = next(n for n, o in enumerate(objs) if o.elf.soname == soname)
    b = reloc.bind(scope, i)
    assert b.count > 0 and not b.undefined
    checked, deferred, bad = live_check(pid, scope, i, relro_only=soname == "libc.so.6")
    print(f"{soname}: {checked} relocated words equal ld.so's ({deferred} deferred), mismatches {len(bad)}")
    assert bad == []
    assert checked > (0.5 if soname == "libc.so.6" else 0.9) * b.count
    # mode 2 against the live image: nothing in it differs from our values
    img, image_addr = file_image(scope.elf(i), scope.l_addr(i))
    live_img = read_relocated(pid, b, image_addr, len(img))
    modid, tpoff = tls_tables(b, live_img, image_addr, len(scope))
    differ, values, deferred2 = reloc.compare(live_img, image_addr, b, tls_modid=modid, tls_tpoff=tpoff)
    if soname == "libc.so.6":
        seg = scope.elf(i).segment(0x6474E552)
        lo = scope.l_addr(i) + seg.vaddr
        differ = [k for k in differ if lo <= b.addr[k] < lo + seg.memsz]
    assert len(differ) == 0 and len(deferred2) == deferred


def test_compare_finds_interposition(live):
    """Mode 2: re-bind libz with a different l_addr for libc: every binding
    into libc differs from the canonical image, nothing else does."""
    pid, objs, scope = live
    i = next(n for n, o in enumerate(objs) if o.elf.soname == "libz.so.1")
    libc = next(n for n, o in enumerate(objs) if o.elf.soname == "libc.so.6")
    b = reloc.bind(scope, i)
    img, image_addr = file_image(objs[i].elf, scope.l_addr(i))
    reloc.apply(img, image_addr, b)
    moved = Scope([(e, a + (0x10000 if n == libc else 0), g) for n, (e, a, g) in enumerate(scope.entries)])
    b2 = reloc.bind(moved, i)
    differ, values, deferred = reloc.compare(img, image_addr, b2)
    expect = {k for k in range(b2.count) if b2.target[k] == libc and k not in set(deferred)}
    assert set(differ) == expect and expect
    for j, k in enumerate(differ):
        assert values[j] == b.value[k] + 0x10000 + (b.addend[k] if b.rtype[k] == 1 else 0)


def test_mask_selects(live):
    pid, objs, scope = live
    i = next(n for n, o in enumerate(objs) if o.elf.soname == "libz.so.1")
    b = reloc.bind(scope, i)
    img, image_addr = file_image(objs[i].elf, scope.l_addr(i))
    before = bytes(img)
    mask = array.array("B", bytes(b.count))
    assert len(reloc.apply(img, image_addr, b, mask=mask, relr=False)) == 0
    assert bytes(img) == before
    with pytest.raises(ValueError):
        reloc.apply(img, image_addr, b, mask=array.array("B", [1]))


def test_out_of_range_and_overflow_are_clean_errors(live):
    pid, objs, scope = live
    i = next(n for n, o in enumerate(objs) if o.elf.soname == "libz.so.1")
    b = reloc.bind(scope, i)
    img, image_addr = file_image(objs[i].elf, scope.l_addr(i))
    with pytest.raises(LdpoolError, match="outside the image"):
        reloc.apply(img[:64], image_addr, b)
    # an R_X86_64_32 against a symbol far above 4 GiB must not be truncated
    k = next(k for k in range(b.count) if b.rtype[k] == 6 and b.value[k] > 2**32
             and not b.flags[k] & reloc.F_IFUNC)
    b.rtype[k] = 10
    with pytest.raises(LdpoolError, match="overflow in R_X86_64_32"):
        reloc.apply(img, image_addr, b)


def test_pages_touched(live):
    """Pages holding a relocation bound into glibc are exactly the ones a
    per-process fixup touches; the others stay shareable."""
    pid, objs, scope = live
    i = next(n for n, o in enumerate(objs) if o.elf.soname == "libstdc++.so.6")
    b = reloc.bind(scope, i)
    img, image_addr = file_image(objs[i].elf, scope.l_addr(i))
    select = array.array("B", [1 if b.target[k] >= 0 and scope.is_glibc(b.target[k]) else 0
                               for k in range(b.count)])
    pages = reloc.pages_touched(b, image_addr, len(img), select)
    want = set()
    for k in range(b.count):
        if select[k]:
            want.add((b.addr[k] - image_addr) // 4096)
            want.add((b.addr[k] + 7 - image_addr) // 4096)
    assert len(pages) == (len(img) + 4095) // 4096
    assert {p for p in range(len(pages)) if pages[p]} == want and 0 < len(want) < len(pages)
    assert sum(reloc.pages_touched(b, image_addr, len(img))) >= len(want)
