"""Real programs doing real work through `ldpool run --no-fallback --`,
compared with native runs: stdout, exit status (signals included) and, where
deterministic, stderr.  Each case is a failure once seen in a sweep of real
workloads, or a workload that exercises what the conformance suite does not
(NSS, gconv, dlopen'ed plugins, fork/spawn, non-PIE executables)."""
import os
import subprocess

import pytest

from launcher_helpers import TIMEOUT, env, need  # noqa: F401  (env is a fixture)

PY = "/usr/bin/python3"


def run(argv, env, pooled, input=None, cwd=None, extra_env=None):
    cmd = (["ldpool", "run", "--no-fallback", "--"] if pooled else []) + list(argv)
    e = dict(env, **(extra_env or {}))
    return subprocess.run(cmd, input=input, capture_output=True, env=e, cwd=cwd, timeout=TIMEOUT)


def same(argv, env, input=None, cwd=None, stderr_too=True, extra_env=None):
    nat = run(argv, env, False, input, cwd, extra_env)
    got = run(argv, env, True, input, cwd, extra_env)
    assert b"ldpool" not in got.stderr or b"ldpool" in nat.stderr, got.stderr.decode(errors="replace")
    assert got.returncode == nat.returncode, (got.returncode, nat.returncode, got.stderr[-2000:])
    assert got.stdout == nat.stdout, (got.stdout[-1000:], nat.stdout[-1000:], got.stderr[-2000:])
    if stderr_too:
        assert got.stderr == nat.stderr, (got.stderr[-2000:], nat.stderr[-2000:])
    return got


def test_non_pie_python_is_pooled(env):
    # /usr/bin/python3 is a non-PIE executable: its undefined malloc/free
    # carry canonical PLT addresses, which replace nothing of glibc's
    if need(PY) and subprocess.run(["readelf", "-h", PY], capture_output=True).stdout.find(b"EXEC") < 0:
        pytest.skip("python3 is a PIE here")
    same([PY, "-c", "import ssl, sqlite3, ctypes, decimal, threading; print(ssl.OPENSSL_VERSION)"], env)


def test_gdb_loads_libthread_db(env):
    # libthread_db binds to gdb's own ps_* functions: ld.so could not bind
    # it to a pooled gdb, which then ran without thread debugging
    import re
    argv = [need("gdb"), "-batch", "-nx", "-ex", "run", "--args", "/usr/bin/true"]
    out = [re.sub(rb"process \d+", b"process N", run(argv, env, pooled).stdout) for pooled in (False, True)]
    assert b"libthread_db enabled" in out[0]
    assert out[1] == out[0]
