"""Start-up time, pytest-benchmark (issue 5's benchmark, issue 6's suite 1):
each program directly under ld.so and through ldpool-exec with a warm
pool, in the same run; the ldpool cases pair every timed run with an
untimed ld.so run just before it (A B A B) and record the median ratio and
the launcher's own breakdown (LDPOOL_TIMING=1) in extra_info.
Targets: <= 1.1x ld.so for the small programs, <= 0.9x for llc-14.

    pytest benchmarks/bench_startup.py --benchmark-enable
"""
import re
import statistics

import pytest

from . import measure, runners
from .conftest import program

PROGRAMS = ("true", "xz", "openssl", "curl", "python3", "llc-14")
TARGET = {"llc-14": 0.9}
ROUNDS = 51   # pairs: on a shared 2-core machine 21 gave medians from 1.1x to 1.5x for one build
PHASES = ("setup", "broker", "check", "glibc", "map", "imports", "fixups", "tls", "init")


def median_faults(stderrs):
    """The launcher's minor page faults per phase (LDPOOL_TIMING's `faults:`
    list, in PHASES order), medians; None when the line has none."""
    rows = []
    for err in stderrs:
        m = re.search(r"ldpool-exec: timing \(us\):.* faults:((?: \d+)+)", err or "")
        if m:
            rows.append([int(x) for x in m.group(1).split()])
    if not rows:
        return None
    return {k: statistics.median(r[i] for r in rows) for i, k in enumerate(PHASES) if all(len(r) > i for r in rows)}


@pytest.mark.parametrize("name", PROGRAMS)
def test_ldso(benchmark, name):
    argv = program(runners.PROGRAMS[name])
    benchmark.group = f"startup {name}"
    _, code, _ = benchmark.pedantic(measure.time_run, args=(argv,), rounds=ROUNDS, warmup_rounds=2)
    assert code == measure.time_run(argv)[1]


@pytest.mark.parametrize("name", PROGRAMS)
def test_ldpool_warm(benchmark, ldpool_side, name):
    argv = program(runners.PROGRAMS[name])
    ldpool_side.require()
    ok, why = runners.verify_output(argv, ldpool_side.broker)
    assert ok, f"{name} through ldpool-exec: {why}"
    benchmark.group = f"startup {name}"
    env = dict(ldpool_side.broker.env(), LDPOOL_TIMING="1")
    b_argv = runners.ldpool_argv(argv)
    a_times, b_runs = [], []

    def before():  # untimed: the ld.so half of the pair
        a_times.append(measure.time_run(argv)[0])

    def target():
        r = measure.time_run(b_argv, env, capture_stderr=True)
        b_runs.append(r)
        return r

    benchmark.pedantic(target, setup=before, rounds=ROUNDS, warmup_rounds=2)
    pairs = list(zip(a_times[-ROUNDS:], b_runs[-ROUNDS:]))
    ratio = statistics.median(b[0] / a for a, b in pairs)
    benchmark.extra_info.update(
        ldso_median_s=statistics.median(a for a, _ in pairs), ratio_median=ratio,
        target=TARGET.get(name, 1.1), breakdown_us=measure.median_breakdown([b[2] for _, b in pairs]),
        faults=median_faults([b[2] for _, b in pairs]))
    assert {b[1] for _, b in pairs} == {measure.time_run(argv)[1]}


@pytest.mark.parametrize("name", ("xz", "openssl", "llc-14"))
def test_ldpool_cold(benchmark, ldpool_side, name):
    """A fresh broker and pool before each timed run: the run pays for
    reading, placing and pre-relocating its images."""
    argv = program(runners.PROGRAMS[name])
    ldpool_side.require()
    benchmark.group = f"startup {name} (cold pool)"
    b_argv = runners.ldpool_argv(argv)
    state = {"broker": None}

    def fresh():
        if state["broker"]:
            state["broker"].close()
        state["broker"] = runners.Broker()
        assert state["broker"].start(), state["broker"].error
        return (b_argv, state["broker"].env()), {}

    try:
        _, code, _ = benchmark.pedantic(measure.time_run, setup=fresh, rounds=5)
    finally:
        if state["broker"]:
            state["broker"].close()
    assert code == measure.time_run(argv)[1]
