"""loader.ldcache against the real ld.so: the system cache, and caches that
ldconfig writes in every format (new, compat, old) with glibc-hwcaps
entries, swapped in for /etc/ld.so.cache in a private mount namespace."""
import re
import shutil
import subprocess

import pytest

from loader import hwcaps
from loader.ldcache import LdCache, default_cache, libcmp
from ldtrees import RTLD, Tree

LDCONFIG = shutil.which("ldconfig") or "/sbin/ldconfig"


def _sign(x):
    return (x > 0) - (x < 0)


@pytest.mark.parametrize("a,b,expect", [
    (b"libfoo.so.10", b"libfoo.so.9", 1), (b"libfoo.so.2", b"libfoo.so.2", 0),
    (b"libfoo.so", b"libfoo.so.1", -1), (b"libfoo2.so", b"libfoo.so", 1),
    (b"liba.so", b"libb.so", -1), (b"lib007.so", b"lib7.so", 0), (b"libx.so.1", b"libx.so.1a", -1),
])
def test_libcmp_compares_digit_runs_as_numbers(a, b, expect):
    assert _sign(libcmp(a, b)) == expect
    assert _sign(libcmp(b, a)) == -expect or expect == 0


TUNED = ["", "-AVX512F", "-AVX2", "-SSE4_2", "-AVX512VL,-BMI2", "-POPCNT", "-OSXSAVE", "-AVX", "-CMOV"]


@pytest.mark.parametrize("off", TUNED)
def test_hwcaps_match_ld_so_help(off):
    """The glibc-hwcaps and legacy subdirectories ld.so reports as searched,
    also with CPU features turned off by the glibc.cpu.hwcaps tunable."""
    env = {"GLIBC_TUNABLES": f"glibc.cpu.hwcaps={off}"} if off else {}
    out = subprocess.run([RTLD, "--help"], capture_output=True, text=True, env=env).stdout
    hw = hwcaps.detect(env)
    block = out.split("Subdirectories of glibc-hwcaps directories, in priority order:")[1]
    block, legacy = block.split("Legacy HWCAP subdirectories under library search path directories:")
    searched = [ln.split()[0] for ln in block.strip().splitlines() if "searched" in ln]
    assert list(hw.subdirs) == searched
    names = {ln.split()[0] for ln in legacy.strip().splitlines() if "searched" in ln}
    assert names == {c for cap in hw.capstr if not cap.startswith("glibc-hwcaps/") for c in cap.split("/") if c}
    assert f"{hw.platform} (AT_PLATFORM" in legacy


def _ldso_cache_answers(names, env_extra=None, bind=None):
    """What ld.so finds in the cache for each name: LD_DEBUG=libs shows the
    cache lookup of every preloaded name (no RPATH or LD_LIBRARY_PATH
    precedes it)."""
    env = {"PATH": "/usr/bin:/bin", "LD_DEBUG": "libs", "LD_PRELOAD": " ".join(names),
           "LD_TRACE_LOADED_OBJECTS": "1", **(env_extra or {})}
    cmd = [RTLD, "/bin/true"]
    if bind:
        # the variables must reach ld.so only, not unshare, sh and mount
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/ld.so.cache && exec env "$@"', bind,
               *(f"{k}={v}" for k, v in env.items()), *cmd]
        env = {"PATH": env["PATH"]}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    answers = {}
    current = None
    lines = r.stderr.splitlines()
    for i, ln in enumerate(lines):
        m = re.search(r"find library=(\S+) \[0\]; searching", ln)
        if m:
            current = m.group(1)
        elif current and "search cache=" in ln:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            m2 = re.search(r"  trying file=(\S+)", nxt)
            answers[current] = m2.group(1) if m2 else None
            current = None
    return answers, r


def test_system_cache_lookups_match_ld_so():
    cache = default_cache()
    assert cache.new and cache.entries
    names = sorted({e[0] for e in cache.entries})
    checked = set()
    # names already loaded (by SONAME) are not searched again: several batches
    for i in range(0, len(names), 60):
        batch = names[i:i + 60]
        answers, _ = _ldso_cache_answers(batch)
        for name, path in answers.items():  # the batch and their dependencies
            assert cache.lookup(name) == path, name
            checked.add(name)
    for name in sorted(set(names) - checked):  # shadowed by an earlier one's SONAME: alone
        answers, _ = _ldso_cache_answers([name])
        if name in answers:
            assert cache.lookup(name) == answers[name], name
            checked.add(name)
    assert len(checked & set(names)) > 0.95 * len(names)
    assert cache.lookup("libdoes-not-exist.so.7") is None
    print(f"\n  system ld.so.cache: {len(names)} names, {len(checked & set(names))} of them "
          f"(+{len(checked - set(names))} others) looked up by ld.so and compared")


@pytest.fixture(scope="module")
def hwcaps_caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("hwcache")
    t = Tree(root)
    for sub in ("", "glibc-hwcaps/x86-64-v2/", "glibc-hwcaps/x86-64-v3/"):
        t.lib(f"lib/{sub}libhc.so.1")
    t.lib("lib/glibc-hwcaps/x86-64-v4/libhc4.so.1")
    t.lib("lib/glibc-hwcaps/x86-64-v2/libhc2.so.1")
    t.lib("lib/libhc2.so.1")
    t.lib("lib/libhc32.so.1", m32=True)
    conf = t.p("ld.so.conf")
    with open(conf, "w") as f:
        f.write(t.p("lib") + "\n")
    out = {}
    for fmt in ("new", "compat", "old"):
        path = t.p(f"cache.{fmt}")
        r = subprocess.run([LDCONFIG, "-c", fmt, "-X", "-C", path, "-f", conf], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out[fmt] = path
    return out


def _can_unshare():
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("fmt", ["new", "compat", "old"])
def test_written_caches_match_ld_so(hwcaps_caches, fmt):
    path = hwcaps_caches[fmt]
    cache = LdCache(path)
    listed = subprocess.run([LDCONFIG, "-p", "-C", path], capture_output=True, text=True).stdout
    assert len(cache.entries) == int(listed.split()[0])
    names = ["libhc.so.1", "libhc4.so.1", "libhc2.so.1", "libhc32.so.1", "libz.so.1", "libc.so.6"]
    ours = {n: cache.lookup(n) for n in names}
    assert ours["libz.so.1"] and ours["libhc32.so.1"] is None
    if not _can_unshare():
        pytest.skip("needs unshare -m (root) to show ld.so another ld.so.cache")
    answers, r = _ldso_cache_answers(names, bind=path)
    assert answers, r.stderr[-2000:]
    for n in names:
        if n in answers:
            assert ours[n] == answers[n], (fmt, n)
    assert set(answers) >= {"libhc.so.1", "libhc4.so.1", "libhc2.so.1"}


@pytest.mark.parametrize("off", ["-AVX512F", "-AVX2", "-SSE4_2"])
def test_written_cache_with_tunables_matches_ld_so(hwcaps_caches, off):
    if not _can_unshare():
        pytest.skip("needs unshare -m (root) to show ld.so another ld.so.cache")
    env = {"GLIBC_TUNABLES": f"glibc.cpu.hwcaps={off}"}
    cache = LdCache(hwcaps_caches["new"], hw=hwcaps.detect(env))
    names = ["libhc.so.1", "libhc4.so.1", "libhc2.so.1"]
    answers, r = _ldso_cache_answers(names, env_extra=env, bind=hwcaps_caches["new"])
    assert set(answers) >= set(names), r.stderr[-2000:]
    for n in names:
        assert cache.lookup(n) == answers[n], (off, n)


def test_best_glibc_hwcaps_entry_wins(hwcaps_caches):
    cache = LdCache(hwcaps_caches["new"])
    hw = cache.hw
    best = hw.subdirs[0] if hw.subdirs else None
    got = cache.lookup("libhc.so.1")
    if best in ("x86-64-v3", "x86-64-v4"):
        assert got.endswith("/glibc-hwcaps/x86-64-v3/libhc.so.1")
    assert cache.hwcaps_names == ["x86-64-v2", "x86-64-v3", "x86-64-v4"]


def test_missing_or_garbage_cache_finds_nothing(tmp_path):
    assert LdCache(str(tmp_path / "none")).lookup("libc.so.6") is None
    bad = tmp_path / "bad"
    bad.write_bytes(b"glibc-ld.so.cache1.1" + b"\xff" * 40)
    assert LdCache(str(bad)).lookup("libc.so.6") is None
    trunc = tmp_path / "trunc"
    trunc.write_bytes(open("/etc/ld.so.cache", "rb").read()[:200])
    assert LdCache(str(trunc)).lookup("libc.so.6") is None
