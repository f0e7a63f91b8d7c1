"""Resolving a program's libraries: loader.resolve in a warm process (file
cache kept, as the broker and `ldpool ldd FILE...` do), cold (fresh file
cache each round), and, in the same run, `ld.so --list` as a subprocess.

Run: pytest benchmarks/bench_ldd.py --benchmark-enable
"""
import shutil
import subprocess

import pytest

from loader import searchpath
from loader.resolve import SearchContext, resolve_program

RTLD = "/lib64/ld-linux-x86-64.so.2"
PROGRAMS = ["/bin/true", "/usr/bin/python3", "llc-14", "curl"]


def _path(name):
    p = name if "/" in name else shutil.which(name)
    if not p:
        pytest.skip(f"{name} is not installed")
    return p


@pytest.mark.parametrize("prog", PROGRAMS)
def test_resolve_warm(benchmark, prog):
    path = _path(prog)
    files = searchpath.FileCache()
    env = {}
    benchmark(lambda: resolve_program(path, env=env, context=SearchContext(env, files=files)))


@pytest.mark.parametrize("prog", PROGRAMS)
def test_resolve_cold(benchmark, prog):
    path = _path(prog)
    env = {}
    benchmark(lambda: resolve_program(path, env=env, context=SearchContext(env, files=searchpath.FileCache())))


@pytest.mark.parametrize("prog", PROGRAMS)
def test_ld_so_list(benchmark, prog):
    path = _path(prog)
    benchmark(lambda: subprocess.run([RTLD, "--list", path], capture_output=True, env={}, check=True))
