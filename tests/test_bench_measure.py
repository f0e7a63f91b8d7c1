"""The benchmark suite's measuring primitives on real processes: smaps
attribution, paired timing, ld.so statistics, KSM control (restored on
exceptions and signals) and prctl(PR_SET_MEMORY_MERGE) across exec."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

try:
    from ldpool_benchmarks import ksm, measure, runners
except ImportError:  # source checkout
    from benchmarks import ksm, measure, runners

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLC = shutil.which("llc-14")


@pytest.fixture(scope="module")
def llc_client():
    if not LLC:
        pytest.skip("llc-14 not installed")
    with runners.Clients(["llc-14", "-o", "/dev/null"], 1) as c:
        assert c.ready, c.failure()
        yield c.pids[0]


def test_smaps_attribution_of_llc(llc_client):
    objs, tot = measure.process_memory(llc_client)
    llvm = [e for label, e in objs.items() if "libLLVM-14" in label]
    assert len(llvm) == 1 and llvm[0]["kind"] == "object"
    # ld.so relocates ~8 MiB of libLLVM's RELRO/data in every process
    assert llvm[0]["Private_Dirty"] > 4096
    assert 0 < llvm[0]["anon_Private_Dirty"] < llvm[0]["Private_Dirty"]  # its .bss
    libc = [e for label, e in objs.items() if label.endswith("/libc.so.6")]
    assert libc and libc[0]["kind"] == "glibc"
    assert tot["objects"]["Private_Dirty"] <= tot["all"]["Private_Dirty"]
    assert tot["objects_file"]["Private_Dirty"] < tot["objects"]["Private_Dirty"]
    assert tot["all"]["USS"] == pytest.approx(tot["all"]["Private_Clean"] + tot["all"]["Private_Dirty"])
    # the same totals as the kernel's own rollup
    with open(f"/proc/{llc_client}/smaps_rollup") as f:
        rollup = {l.split(":")[0]: int(l.split()[1]) for l in f if l.split()[0].endswith(":") and "kB" in l}
    # (a .bss merged with a neighbouring anonymous mapping is split in
    # fractional shares, hence approx)
    assert tot["all"]["Rss"] == pytest.approx(rollup["Rss"], abs=0.5)
    assert abs(tot["all"]["Pss"] - rollup["Pss"]) <= len(objs) + 8  # per-mapping rounding


def test_relocation_caused_private_memory_of_python3():
    """The loader-only pages of libcrypto in a python3 with ssl imported, under
    ld.so: exactly the Private_Dirty of the mapping ld.so mprotected over
    its RELRO, and no mapping straddles a loader-only edge in any object."""
    from loader.elf import ElfFile
    argv = runners.IDLE_CLIENTS["python3"]
    with runners.Clients(argv, 1) as c:
        assert c.ready, c.failure()
        maps = measure.read_smaps(c.pids[0])
        objs, tot = measure.process_memory(c.pids[0])
    crypto = [l for l in objs if "/libcrypto.so" in l]
    assert len(crypto) == 1
    e, path = objs[crypto[0]], crypto[0]
    mine = [m for m in maps if m.path and os.path.realpath(m.path) == path]
    elf = ElfFile(path)
    bias = mine[0].start - (elf.loads[0].vaddr & ~4095)
    lo = bias + (elf.relro.vaddr & ~4095)
    hi = bias + ((elf.relro.vaddr + elf.relro.memsz) & ~4095)
    elf.close()
    covering = [m for m in mine if m.start <= lo and hi <= m.end]
    assert len(covering) == 1 and (covering[0].start, covering[0].end) == (lo, hi)  # its own mapping
    assert covering[0].perms.startswith("r--")
    assert e["reloc_Private_Dirty"] > 0
    # the read-only segments hold no private page, so RELRO is all of it
    assert e["reloc_Private_Dirty"] == covering[0].Private_Dirty
    # python3's own .data is private but not the loader's doing
    py = next(v for l, v in objs.items() if os.path.basename(l).startswith("python3"))
    assert py["Private_Dirty"] > 8 * py["reloc_Private_Dirty"]
    assert tot["objects_reloc"]["straddling"] == 0
    assert 0 < tot["objects_reloc"]["Private_Dirty"] < tot["objects_file"]["Private_Dirty"]


def test_relocation_caused_private_memory_of_llc(llc_client):
    objs, tot = measure.process_memory(llc_client)
    llvm = next(e for label, e in objs.items() if "libLLVM-14" in label)
    # nearly all of libLLVM's private memory is its relocated RELRO
    assert llvm["reloc_Private_Dirty"] > 4096
    assert llvm["reloc_Private_Dirty"] <= llvm["Private_Dirty"] - llvm["anon_Private_Dirty"]
    assert tot["objects_reloc"]["straddling"] == 0


def test_placement_ranges_take_precedence(llc_client):
    maps = measure.read_smaps(llc_client)
    m = next(m for m in maps if "libLLVM-14" in m.path)
    objs = measure.attribute(maps, ranges=[(m.start, m.end, "pooled:llvm")])
    assert objs["pooled:llvm"]["kind"] == "object"
    assert objs["pooled:llvm"]["Rss"] == m.Rss
    report = {"images": [{"path": "/usr/lib/x.so", "base": "0x7f0000000000", "va_size": 8192, "refs": 1}],
              "window": "0x7e0000000000"}
    assert runners.placement_ranges(report) == [(0x7F0000000000, 0x7F0000002000, "/usr/lib/x.so")]


def test_paired_timing_sees_a_real_difference():
    p = measure.paired(["/bin/true"], ["/bin/sleep", "0.03"], 3, warmup=0)
    assert p["n"] == 3 and len(p["a_s"]) == len(p["b_s"]) == 3
    assert p["ratio_median"] > 3 and p["b_median_s"] >= 0.03
    assert p["exit_codes"] == [(0, 0)]
    dt, code, err = measure.time_run(["/bin/sh", "-c", "echo oops >&2; exit 3"], capture_stderr=True)
    assert code == 3 and err == "oops\n"


def test_launcher_timing_line():
    err = "noise\nldpool-exec: timing connect=12us map=30.5us fixups=7us init=100us\n"
    assert measure.parse_launcher_timing(err) == {"connect": 12.0, "map": 30.5, "fixups": 7.0, "init": 100.0}
    assert measure.parse_launcher_timing("nothing here") is None
    # the launcher's own format (_native/launcher/main.c)
    line = "ldpool-exec: timing (us): broker=1891 =0 check=2 glibc=15 map=48 fixups=54 init=0\n"
    assert measure.parse_launcher_timing(line) == {"broker": 1891.0, "check": 2.0, "glibc": 15.0,
                                                   "map": 48.0, "fixups": 54.0, "init": 0.0}
    assert measure.median_breakdown([err, err.replace("12us", "14us"), ""])["connect"] == 13.0


def test_ldso_statistics_and_tsc():
    hz = measure.tsc_hz()
    assert 0.5e9 < hz < 6e9
    _, _, err = measure.time_run(["/bin/true"], dict(os.environ, LD_DEBUG="statistics"), capture_stderr=True)
    st = measure.ldso_statistics(err)
    assert st["relocations"] > 0 and st["reloc_cycles"] > 0 and st["startup_cycles"] >= st["reloc_cycles"]


needs_ksm = pytest.mark.skipif(not ksm.writable(), reason="/sys/kernel/mm/ksm is not writable")


@needs_ksm
def test_ksm_session_restores_on_exception():
    before = ksm.settings()
    new = str(int(before["pages_to_scan"]) + 7)
    with pytest.raises(RuntimeError):
        with ksm.Session(pages_to_scan=new):
            assert ksm.read("pages_to_scan") == new
            raise RuntimeError("boom")
    assert ksm.settings() == before


@needs_ksm
def test_ksm_session_restores_on_sigterm(tmp_path):
    before = ksm.settings()
    pkg = "ldpool_benchmarks" if "ldpool_benchmarks" in ksm.__name__ else "benchmarks"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from {pkg} import ksm
        with ksm.Session(run=1, pages_to_scan=1234):
            print("in", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "in\n"
    assert ksm.read("pages_to_scan") == "1234"
    p.terminate()
    p.wait(20)
    assert ksm.settings() == before


@needs_ksm
def test_ksm_settings_recovered_after_sigkill():
    before = ksm.settings()
    pkg = "ldpool_benchmarks" if "ldpool_benchmarks" in ksm.__name__ else "benchmarks"
    script = (f"import sys, time; sys.path.insert(0, {REPO!r}); from {pkg} import ksm\n"
              "s = ksm.Session(pages_to_scan=4321).__enter__(); print('in', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "in\n"
    p.kill()
    p.wait()
    assert ksm.read("pages_to_scan") == "4321"  # nothing could run in the killed process
    assert ksm.recover_leftover()
    assert ksm.settings() == before


def test_prctl_merge_survives_exec():
    if not os.path.exists("/proc/self/ksm_stat"):
        pytest.skip("kernel without /proc/PID/ksm_stat")
    with runners.Clients(["/bin/cat"], 2, ksm_merge=True) as c:
        assert c.ready, c.failure()
        assert all(ksm.process_merge_any(p) for p in c.pids)
    with runners.Clients(["/bin/cat"], 1) as c:
        assert not ksm.process_merge_any(c.pids[0])


def test_clients_report_why_they_failed():
    with runners.Clients(["/bin/sh", "-c", "echo cannot start >&2; exit 4"], 2, timeout=10) as c:
        assert not c.ready
        assert "exited (status 4)" in c.failure() and "cannot start" in c.failure()
