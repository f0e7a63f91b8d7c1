"""The plan side of start-up: building the pool image of libLLVM-14 (mode 1,
stubs included) and the per-process plan of llc-14 (mode 2 against the
pool images), in a warm process, with ld.so's own relocation time for
llc-14 measured in the same run for scale.

Run: pytest benchmarks/bench_plan.py --benchmark-enable -s
"""
import pytest

from benchmarks.bench_reloc import _ldso
from loader import image as limage
from loader import resolve
from loader.localpool import LocalPool, canonical_deps
from loader.plan import build_plan, plan_stats

BASE = 0x3E00_0000_0000


@pytest.fixture(scope="module")
def llc():
    try:
        res = resolve.resolve_program("/usr/bin/llc-14", env={})
    except Exception as e:      # not installed
        pytest.skip(f"llc-14: {e}")
    pool = LocalPool(size=1 << 31)
    build_plan(res, pool)       # every image built once: the warm state of a broker
    yield res, pool
    pool.close()


def test_build_image_libllvm(benchmark, llc):
    res, pool = llc
    obj = next(o for o in res.objects if o.path.endswith("libLLVM-14.so.1"))
    elf = obj.elf
    lay = limage.layout(elf)
    scope = [(elf, BASE, False)] + [(d.elf, pool.place(d).base if not d.is_glibc else 0, d.is_glibc)
                                     for d in canonical_deps(obj)]
    buf = bytearray(lay.pool_size)
    key = limage.image_key(elf)
    info = benchmark.pedantic(lambda: limage.build_image(elf, BASE, scope, buf, key=key),
                              rounds=7, warmup_rounds=1)
    med = benchmark.stats.stats.median
    lazy = _ldso({})
    print(f"\nldpool: libLLVM-14 image: {info.nrelocs} relocations, {len(info.stubs)} glibc stubs, "
          f"{len(limage.shared_pages(info))} shareable pages; build median {med * 1e3:.0f} ms "
          f"({info.nrelocs / med / 1e6:.1f} M relocations/s)")
    if lazy:
        print(f"ld.so: llc-14 --version: relocation {lazy[0]:.1f} ms for {lazy[1]} relocations (all objects)")
    benchmark.extra_info.update(relocations=info.nrelocs, ldso_reloc_ms=lazy and lazy[0])


def test_build_plan_llc(benchmark, llc):
    res, pool = llc
    blob = benchmark.pedantic(lambda: build_plan(res, pool), rounds=10, warmup_rounds=1)
    med = benchmark.stats.stats.median
    rows, total = plan_stats(blob)
    lazy = _ldso({})
    print(f"\nldpool: llc-14 plan: {len(blob)} bytes, {total['fixups']} fixups, pages shared "
          f"{total['shared']} / private {total['private']}; build median {med * 1e3:.1f} ms")
    if lazy:
        print(f"ld.so: llc-14 --version: relocation {lazy[0]:.1f} ms (what the plan replaces)")
    benchmark.extra_info.update(plan_ms=med * 1e3, fixups=total["fixups"], ldso_reloc_ms=lazy and lazy[0])
