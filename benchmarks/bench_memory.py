"""Memory at scale, pytest-benchmark (issue 6's suite 2, issue 4's
acceptance): N idle clients of llc-14 and of python3 (ssl, sqlite3,
ctypes) under ld.so, through ldpool, and under ld.so with KSM.  The timed
part is starting the N clients until all are idle; the memory figures
(mean per process, smaps) are in extra_info.

    pytest benchmarks/bench_memory.py --benchmark-enable
"""
import pytest

from . import ksm, runners, suite_memory
from .conftest import program

NS = (1, 4, 16, 64)


def _record(benchmark, res):
    assert res.get("available"), res.get("reason")
    pp = res["per_process_kB"]
    benchmark.extra_info.update(
        pss_kB=pp["all"]["Pss"], uss_kB=pp["all"]["USS"],
        objects_private_dirty_kB=pp["objects"]["Private_Dirty"],
        objects_private_dirty_no_bss_kB=pp["objects_file"]["Private_Dirty"],
        objects_private_dirty_reloc_kB=pp["objects_reloc"]["Private_Dirty"],
        per_object_kB=res["per_object_kB"])
    return pp


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("prog", list(runners.IDLE_CLIENTS))
@pytest.mark.parametrize("mode", ("ldso", "ldpool", "ldso_ksm"))
def test_memory(benchmark, ldpool_side, mode, prog, n):
    argv = runners.IDLE_CLIENTS[prog]
    program(argv)
    benchmark.group = f"memory {prog} N={n}"
    if mode == "ldpool":
        ldpool_side.require()
        res = benchmark.pedantic(suite_memory.measure_clients, args=(argv, n, ldpool_side.broker), rounds=1)
    elif mode == "ldso_ksm":
        if not ksm.writable():
            pytest.skip("/sys/kernel/mm/ksm is not writable")
        res = benchmark.pedantic(suite_memory.measure_clients_ksm, args=(argv, n, 40), rounds=1)
    else:
        res = benchmark.pedantic(suite_memory.measure_clients, args=(argv, n), rounds=1)
    _record(benchmark, res)


@pytest.mark.parametrize("prog", list(runners.IDLE_CLIENTS))
def test_issue4_acceptance(benchmark, ldpool_side, prog):
    """16 copies: per-process private memory of pooled objects through
    ldpool must be at most 5 % of ld.so's (measured in this run)."""
    argv = runners.IDLE_CLIENTS[prog]
    program(argv)
    ldpool_side.require()
    n = suite_memory.ACCEPT_N
    benchmark.group = f"issue 4 acceptance {prog} N={n}"
    a = suite_memory.measure_clients(argv, n)
    b = benchmark.pedantic(suite_memory.measure_clients, args=(argv, n, ldpool_side.broker), rounds=1)
    acc = suite_memory.acceptance({"programs": {prog: {"by_N": {str(n): {"ldso": a, "ldpool": b}}}}})
    e = acc["programs"][prog]
    benchmark.extra_info.update(e)
    assert e["measured"], e.get("reason")
    # the verdict counts the objects' .bss too; extra_info has all three figures
    rr = e["private_dirty_reloc"]["ratio"]
    assert e["pass"], (f"{prog}: ldpool's private library memory is {e['private_dirty']['ratio']:.1%} "
                       f"of ld.so's with .bss, {e['private_dirty_no_bss']['ratio']:.1%} without, "
                       f"{'n/a' if rr is None else f'{rr:.1%}'} relocation-caused "
                       f"(limit {suite_memory.ACCEPT_MAX:.0%})")
