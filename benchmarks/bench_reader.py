"""ELF reader benchmark (pytest-benchmark; run explicitly):

    pytest benchmarks/bench_reader.py --benchmark-enable

Decoding every dynamic relocation of libLLVM-14 (~355k: DT_RELA + DT_JMPREL)
into (offset, type, sym, addend) columns, page cache warm:
* ldpool: ElfFile(path).relocations() -- open, map, parse, decode with
  _native.elfscan and validate; target <= 100 ms;
* readelf -rW (binutils), as a subprocess writing to /dev/null;
* pyelftools (one round: it takes seconds).
All three run in the same session and must agree on the count."""
import subprocess
from pathlib import Path

import pytest

from loader.elf import ElfFile

LLVM = Path("/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1")
pytestmark = pytest.mark.skipif(not LLVM.exists(), reason=f"{LLVM} not installed (llvm-14)")


@pytest.fixture(scope="module")
def expected():
    with ElfFile(LLVM) as e:
        n = len(e.relocations())
    LLVM.read_bytes()  # warm the page cache for everyone
    return n


def ldpool_decode():
    e = ElfFile(LLVM)
    return len(e.relocations())


@pytest.mark.benchmark(group="reader: libLLVM-14 relocations")
def test_ldpool(benchmark, expected):
    assert benchmark(ldpool_decode) == expected
    assert benchmark.stats.stats.median <= 0.100, "target: <= 100 ms warm"


@pytest.mark.benchmark(group="reader: libLLVM-14 relocations")
def test_readelf(benchmark, expected):
    def run():
        subprocess.run(["readelf", "-rW", str(LLVM)], stdout=subprocess.DEVNULL, check=True)
    benchmark.pedantic(run, rounds=3, iterations=1)
    out = subprocess.run(["readelf", "-rW", str(LLVM)], capture_output=True, text=True, check=True).stdout
    assert sum(1 for line in out.splitlines() if "R_X86_64_" in line) == expected


@pytest.mark.benchmark(group="reader: libLLVM-14 relocations")
def test_pyelftools(benchmark, expected):
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile

    def run():
        with open(LLVM, "rb") as f:
            dseg = next(s for s in ELFFile(f).iter_segments() if isinstance(s, DynamicSegment))
            n = 0
            for name, table in dseg.get_relocation_tables().items():
                if name in ("RELA", "JMPREL"):
                    for r in table.iter_relocations():
                        (r["r_offset"], r["r_info_type"], r["r_info_sym"], r["r_addend"])
                        n += 1
            return n
    assert benchmark.pedantic(run, rounds=1, iterations=1) == expected
