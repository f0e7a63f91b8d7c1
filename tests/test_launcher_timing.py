"""LDPOOL_TIMING=1: the launcher's per-phase breakdown, times and minor page
faults, against the kernel's own count for the same real process (wait4's
rusage) with a real broker and the plan cache file path."""
import os
import re
import subprocess

from broker_helpers import broker  # noqa: F401  (a fixture)
from launcher_helpers import env  # noqa: F401  (a fixture)

PHASES = ("setup", "broker", "check", "glibc", "map", "imports", "fixups", "tls", "init")
LINE = re.compile(r"ldpool-exec: timing \(us\):(?P<times>(?: \w+=\d+)+) path=(?P<path>\w+) faults:(?P<faults>(?: \d+)+)\n")


def _run(argv, e):
    """stdout, stderr, exit status and the kernel's minor fault count."""
    r, w = os.pipe()
    p = subprocess.Popen(["ldpool-exec", "--no-fallback", "--", *argv], env=e, stdout=subprocess.PIPE,
                         stderr=w)
    os.close(w)
    out = p.stdout.read()
    err = b""
    while chunk := os.read(r, 65536):
        err += chunk
    os.close(r)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return out, err.decode(), p.returncode, ru.ru_minflt


def test_timing_line_counts_faults_per_phase(broker, env):
    e = dict(env, LDPOOL_SOCKET=broker.socket, LDPOOL_TIMING="1")
    want = subprocess.run(["/usr/bin/xz", "--version"], capture_output=True, timeout=60).stdout
    seen = []
    for _ in range(2):   # the broker's answer, then the plan cache file
        out, err, code, minflt = _run(["/usr/bin/xz", "--version"], e)
        assert (code, out) == (0, want), err
        m = LINE.search(err)
        assert m, err
        times = dict(kv.split("=") for kv in m["times"].split())
        assert tuple(times) == PHASES
        faults = [int(x) for x in m["faults"].split()]
        assert len(faults) == len(PHASES)
        # the phases are part of the process: never more than the kernel
        # counted for it, and mapping a program faults at least once
        assert 0 < sum(faults) <= minflt, (faults, minflt)
        assert faults[PHASES.index("map")] + faults[PHASES.index("imports")] > 0
        seen.append(m["path"])
    assert seen == ["slow", "fast"]
