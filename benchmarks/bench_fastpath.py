"""Start-up through the plan cache file (the fast path: no broker round
trip) against the broker's answer (LDPOOL_NO_FASTPATH=1) and against ld.so,
in the same run, pairwise (ld.so, fast, slow, ld.so, fast, slow, ...) with a
warm broker.  extra_info: median wall times, the ratios to ld.so and the
launcher's median breakdown (LDPOOL_TIMING=1) of each path.

    pytest benchmarks/bench_fastpath.py --benchmark-enable
"""
import statistics

import pytest

from . import measure, runners
from .conftest import program

PROGRAMS = ("xz", "openssl", "curl", "llc-14")
ROUNDS = 31


@pytest.mark.parametrize("name", PROGRAMS)
def test_fast_vs_slow_path(benchmark, ldpool_side, name):
    argv = program(runners.PROGRAMS[name])
    ldpool_side.require()
    benchmark.group = f"fastpath {name}"
    b_argv = runners.ldpool_argv(argv)
    fast_env = dict(ldpool_side.broker.env(), LDPOOL_TIMING="1")
    slow_env = dict(fast_env, LDPOOL_NO_FASTPATH="1")
    for env in (fast_env, fast_env, slow_env):        # warm: pool, plan cache file, page cache
        measure.time_run(b_argv, env)
    ldso, slow = [], []

    def before():  # untimed: ld.so and the slow path beside each timed fast-path run
        ldso.append(measure.time_run(argv)[0])
        slow.append(measure.time_run(b_argv, slow_env, capture_stderr=True))

    fast = []

    def target():
        r = measure.time_run(b_argv, fast_env, capture_stderr=True)
        fast.append(r)
        return r

    benchmark.pedantic(target, setup=before, rounds=ROUNDS, warmup_rounds=1)
    ldso, slow, fast = ldso[-ROUNDS:], slow[-ROUNDS:], fast[-ROUNDS:]
    assert all("path=fast" in r[2] for r in fast), fast[-1][2]
    assert all("path=slow" in r[2] for r in slow), slow[-1][2]
    benchmark.extra_info.update(
        ldso_median_s=statistics.median(ldso),
        fast_median_s=statistics.median(r[0] for r in fast),
        slow_median_s=statistics.median(r[0] for r in slow),
        fast_ratio=statistics.median(f[0] / a for a, f in zip(ldso, fast)),
        slow_ratio=statistics.median(s[0] / a for a, s in zip(ldso, slow)),
        fast_breakdown_us=measure.median_breakdown([r[2] for r in fast]),
        slow_breakdown_us=measure.median_breakdown([r[2] for r in slow]))
