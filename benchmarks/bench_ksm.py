"""Time to share, pytest-benchmark (issue 6's suite 3): 16 llc-14 clients
under ld.so opted into KSM (prctl PR_SET_MEMORY_MERGE), ASLR on and off,
sampled every second; ldpool's clients measured at t = 0.  KSM's settings
are restored afterwards whatever happens.  LDPOOL_BENCH_KSM_SECONDS sets
the duration (default 120).

    pytest benchmarks/bench_ksm.py --benchmark-enable
"""
import os

import pytest

from . import ksm, runners, suite_ksm
from .conftest import program

N = 16
SECONDS = int(os.environ.get("LDPOOL_BENCH_KSM_SECONDS", "120"))


@pytest.mark.parametrize("aslr", ("on", "off"))
def test_ksm_time_to_share(benchmark, aslr):
    argv = runners.IDLE_CLIENTS[suite_ksm.PROG]
    program(argv)
    if not ksm.writable():
        pytest.skip("/sys/kernel/mm/ksm is not writable")
    before = ksm.settings()
    benchmark.group = "time to share"
    res = benchmark.pedantic(suite_ksm.ksm_run, args=(argv, N, SECONDS, aslr == "off"), rounds=1)
    assert ksm.settings() == before
    assert res.get("available"), res.get("reason")
    benchmark.extra_info.update({k: v for k, v in res.items() if k != "samples"})
    benchmark.extra_info["recovered_pct_by_s"] = [s["recovered_pct"] for s in res["samples"]]


def test_ldpool_time_to_share(benchmark, ldpool_side):
    argv = runners.IDLE_CLIENTS[suite_ksm.PROG]
    program(argv)
    ldpool_side.require()
    benchmark.group = "time to share"

    class Ctx:  # what suite_ksm.ldpool_run needs from the bench context
        ldpool_ok, ldpool_reason, broker = True, "", ldpool_side.broker
        step = staticmethod(lambda s: None)

    res = benchmark.pedantic(suite_ksm.ldpool_run, args=(Ctx, argv, N, {}), rounds=1)
    assert res.get("available"), res.get("reason")
    benchmark.extra_info.update(res)
