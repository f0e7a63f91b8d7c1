"""The shared conformance suite (26 cases) with ldpool as the loader: once
through the friendly front `ldpool run --` and once through the launcher
`ldpool-exec` directly.  Each run builds the cases (~10 s) and runs every
program under the prefix; the suite itself compares with glibc's ld.so."""
import os
import re
import shutil
import subprocess

import pytest


def _run_suite(shared, prefix, tmp_path):
    env = dict(os.environ)
    from launcher_helpers import SOCKDIR as sockdir          # the test broker, started on demand
    os.makedirs(sockdir, mode=0o700, exist_ok=True)
    env["LDPOOL_SOCKET"] = f"{sockdir}/broker.sock"
    env["TMPDIR"] = str(tmp_path)
    r = subprocess.run([str(shared / "conformance" / "run.sh"), *prefix], capture_output=True,
                       text=True, env=env, timeout=900)
    fails = [l for l in r.stdout.splitlines() if l.startswith("FAIL")]
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, f"run.sh printed no summary:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2)), fails, r


@pytest.mark.parametrize("front", ["ldpool-exec", "ldpool run --"])
def test_conformance_suite(shared, tmp_path, front):
    words = front.split()
    if shutil.which(words[0]) is None:
        pytest.fail(f"{words[0]} is not on PATH: install the package or run tools/dev-build")
    passed, failed, fails, r = _run_suite(shared, words, tmp_path)
    assert (passed, failed) == (26, 0), "\n".join(fails)
    # the fallback notice must never be needed for the conformance cases
    assert "under ld.so" not in r.stdout
