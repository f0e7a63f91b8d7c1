"""Shared helpers of the launcher tests: run a command natively and through
ldpool-exec (with the test broker, started on demand) and compare."""
import os
import shutil
import subprocess

import pytest

# LDPOOL_TEST_SOCKDIR: a private test broker (trees tested side by side)
SOCKDIR = os.environ.get("LDPOOL_TEST_SOCKDIR") or f"/tmp/ldpool-test-{os.getuid()}"
TIMEOUT = 300          # first runs pre-relocate big libraries (libLLVM) in the broker


@pytest.fixture(scope="module")
def env():
    os.makedirs(SOCKDIR, mode=0o700, exist_ok=True)
    e = dict(os.environ)
    e["LDPOOL_SOCKET"] = f"{SOCKDIR}/broker.sock"
    e["LC_ALL"] = "C"
    e.pop("LDPOOL_DEBUG", None)
    if shutil.which("ldpool-exec", path=e.get("PATH")) is None:
        pytest.fail("ldpool-exec is not on PATH: install the package or run tools/dev-build")
    return e


def run(argv, env, pooled, input=None, cwd=None):
    cmd = (["ldpool-exec", "--no-fallback", "--"] if pooled else []) + list(argv)
    return subprocess.run(cmd, input=input, capture_output=True, env=env, cwd=cwd, timeout=TIMEOUT)


def same(argv, env, input=None, cwd=None, stderr_too=False):
    """Run natively and pooled; assert identical stdout and exit status.
    Returns the pooled result."""
    nat = run(argv, env, False, input, cwd)
    got = run(argv, env, True, input, cwd)
    if nat.returncode != 127:
        assert b"ldpool-exec:" not in got.stderr, got.stderr.decode(errors="replace")
    assert got.returncode == nat.returncode, (got.returncode, nat.returncode, got.stderr[-2000:])
    assert got.stdout == nat.stdout, (got.stdout[-1000:], nat.stdout[-1000:], got.stderr[-2000:])
    if stderr_too:
        assert got.stderr == nat.stderr
    return got


def need(prog):
    p = shutil.which(prog)
    if p is None:
        pytest.fail(f"{prog} is not installed (bootstrap.sh installs it)")
    return p


