"""Pre-relocating libLLVM-14.so.1 at a fixed address in a warm process, and,
in the same run, ld.so's own relocation time for llc-14.

Run: pytest benchmarks/bench_reloc.py --benchmark-enable -s

ldpool side: the canonical scope of libLLVM (itself, then its dependency
closure breadth-first, glibc's family included) is built once (warm
process); each round binds every relocation (symbol lookups against the
real closure, no cache kept between rounds) and applies them to an image of
the library laid out for its address.  Reported: relocations per second and
milliseconds per library; target >= 5 M/s, <= 150 ms.

ld.so side: `LD_DEBUG=statistics llc-14 --version` (default lazy binding
and LD_BIND_NOW=1), "time needed for relocation" in TSC cycles converted
with the measured TSC rate, for all of llc-14's objects (libLLVM dominates).
"""
import os
import re
import shutil
import statistics
import subprocess
import time

import pytest

from _native import reloc
from loader.image import memory_image
from loader.scope import Scope

LIB = "libLLVM-14.so.1"
BASE = 0x7E0000000000
SPACING = 0x100000000


def _canonical_scope():
    from loader.resolve import resolve_library
    res = resolve_library(LIB)
    entries = [(o.elf, BASE + i * SPACING, o.is_glibc) for i, o in enumerate(res.objects)]
    return Scope(entries, main_is_exec=False)


@pytest.fixture(scope="module")
def llvm():
    try:
        scope = _canonical_scope()
    except Exception as e:  # not installed
        pytest.skip(f"{LIB}: {e}")
    img, image_addr = memory_image(scope.elf(0), scope.l_addr(0))
    return scope, img, image_addr


def _ldso(env_extra, n=7):
    exe = shutil.which("llc-14") or "/usr/lib/llvm-14/bin/llc"
    if not os.path.exists(exe):
        return None
    from benchmarks import measure
    hz = measure.tsc_hz()
    times, counts = [], None
    for _ in range(n):
        env = dict(os.environ, LD_DEBUG="statistics", **env_extra)
        err = subprocess.run([exe, "--version"], env=env, capture_output=True, text=True).stderr
        m = re.search(r"time needed for relocation: (\d+) cycles", err)
        rel = re.search(r"number of relocations: (\d+)", err)
        relc = re.search(r"number of relocations from cache: (\d+)", err)
        rela = re.search(r"number of relative relocations: (\d+)", err)
        times.append(int(m.group(1)) / hz * 1e3)
        counts = sum(int(x.group(1)) for x in (rel, relc, rela) if x)
    return statistics.median(times), counts


def test_prerelocate_libllvm(benchmark, llvm):
    scope, img, image_addr = llvm

    def once():
        b = reloc.bind(scope, 0)
        reloc.apply(img, image_addr, b)
        return b

    b = benchmark.pedantic(once, rounds=15, warmup_rounds=2)
    best = benchmark.stats.stats.min
    med = benchmark.stats.stats.median
    t0 = time.perf_counter()
    reloc.bind(scope, 0)
    bind_only = time.perf_counter() - t0
    rate = b.count / med
    lazy = _ldso({})
    now = _ldso({"LD_BIND_NOW": "1"})
    lines = [f"ldpool: {LIB}: {b.count} relocations, bind+apply median {med * 1e3:.1f} ms "
             f"(best {best * 1e3:.1f} ms, bind alone {bind_only * 1e3:.1f} ms): {rate / 1e6:.1f} M relocations/s"]
    for label, r in (("lazy", lazy), ("LD_BIND_NOW=1", now)):
        if r:
            lines.append(f"ld.so: llc-14 --version ({label}): relocation {r[0]:.1f} ms for {r[1]} "
                         f"relocations (all objects): {r[1] / r[0] / 1e3:.1f} M relocations/s")
    print("\n" + "\n".join(lines))
    benchmark.extra_info.update(relocations=b.count, reloc_per_s=rate,
                                ldso_ms_lazy=lazy and lazy[0], ldso_ms_now=now and now[0])
    assert rate >= 5e6 and med <= 0.150


def test_scope_construction(benchmark):
    """The cold part: opening the closure's files and building the scope."""
    scope = benchmark.pedantic(_canonical_scope, rounds=5)
    assert len(scope) > 5
