"""Fuzz the ELF reader: mutated and truncated copies of real small libraries
(and the Cython decoders on arbitrary words) may only ever raise ElfError
(ValueError for the bare decoders), never anything else, never crash. What
the reader does accept must keep the promises its consumers index by."""
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _native import elfscan
from loader import elf as L
from loader.elf import DT, ElfFile
from loader.errors import ElfError

LIBDIR = Path("/lib/x86_64-linux-gnu")
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TINY_C = r"""
__thread int tls_counter = 5;
__thread char tls_big[64];
static int inited;
static const char *table[] = {"a", "b", "c", "d"};   /* RELATIVE / RELR */
extern int puts(const char *);
__attribute__((constructor)) static void init(void) { inited = 1; }
__attribute__((destructor)) static void fini(void) { inited = 0; }
int tiny_get(int i) { return table[i & 3][0] + tls_counter + inited; }
int tiny_say(void) { return puts(table[1]) + tls_big[3]; }
int tiny_v1(void) { return 1; }
int tiny_v2(void) { return 2; }
__asm__(".symver tiny_v1, tiny_ver@V1");
__asm__(".symver tiny_v2, tiny_ver@@V2");
"""


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Small real libraries, as (name, bytes, regions worth mutating)."""
    d = tmp_path_factory.mktemp("fuzz-bases")
    paths = [LIBDIR / "libz.so.1", LIBDIR / "libdl.so.2"]
    # one built here with every table the reader knows: TLS, RELR, both
    # hash styles, versions, init/fini arrays
    (d / "tiny.c").write_text(TINY_C)
    (d / "tiny.map").write_text("V1 { global: tiny_get; tiny_say; local: *; };\nV2 { } V1;\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", d / "libtiny.so", d / "tiny.c",
                    f"-Wl,--version-script={d / 'tiny.map'}", "-Wl,--hash-style=both",
                    "-Wl,-z,pack-relative-relocs", "-Wl,--build-id"], check=True)
    paths.append(d / "libtiny.so")
    out = []
    for p in paths:
        with ElfFile(p) as e:
            out.append((p.name, p.read_bytes(), regions(e)))
    return out


def regions(e):
    """File ranges the reader interprets: headers and every dynamic table."""
    r = [(0, L.EHDR.size), (e.e_phoff, e.e_phnum * L.PHDR.size)]
    d = e.segment(L.PT_DYNAMIC)
    r.append((d.offset, d.filesz))
    for tag in ("SYMTAB", "STRTAB", "GNU_HASH", "HASH", "VERSYM", "VERDEF", "VERNEED",
                "RELA", "JMPREL", "RELR", "INIT_ARRAY"):
        if DT[tag] in e.dyn:
            off = e.offset_of(e.dyn[DT[tag]])
            r.append((off, min(512, e.size - off)))
    for s in e.segments:
        if s.type in (L.PT_NOTE, L.PT_TLS):
            r.append((s.offset, max(s.filesz, 8)))
    if e.e_shoff:
        r.append((e.e_shoff, e.size - e.e_shoff))
    return r


VALUES = st.sampled_from([0, 1, 2, 3, 7, 8, 16, 24, 0x7F, 0x80, 0xFF, 0xFFFF, 0x1000, 0x10000,
                          0x7FFFFFFF, 0xFFFFFFFF, 2 ** 63, 2 ** 64 - 1, 2 ** 64 - 8]) | st.integers(0, 2 ** 64 - 1)
MUTATION = st.tuples(st.integers(0, 1000), st.floats(0, 1), st.sampled_from(["B", "<H", "<I", "<Q"]), VALUES)


def exercise(e):
    """Touch every accessor, then check the promises made to C consumers."""
    e.segments, e.loads, e.interp, e.needed, e.soname, e.rpath, e.runpath, e.bind_now
    e.tls, e.tls_image, e.relro, e.eh_frame_hdr, e.stack_flags, e.build_id, e.notes()
    for arr in (e.init_array, e.fini_array, e.preinit_array):
        e.array_words(arr)
    n = e.nsyms
    for i in range(min(n, 400)):
        e.symbol(i)
    e.versym, e.versions, e.sections, e.section_dynsym_count, e.strtab_bytes, e.symtab_bytes
    lo, hi = e.page_span
    rel = e.relocations()
    for i in range(len(rel)):
        assert rel.sym[i] < max(n, 1)
        assert rel.type[i] in (0, 35) or lo <= rel.offset[i] <= hi - 1
    rel.histogram()
    for a in e.relr_addresses():
        assert lo <= a <= hi - 8
    gh = e.gnu_hash_table
    if gh is not None:
        assert all(b == 0 or gh.symoffset <= b < n for b in gh.buckets)
        assert gh.symoffset + len(gh.chains) <= max(n, gh.symoffset)
        assert len(gh.bloom) == gh.bloom_size and gh.bloom_size & (gh.bloom_size - 1) == 0
    sh = e.sysv_hash_table
    if sh is not None:
        assert sh.nchain <= n and all(x < max(sh.nchain, 1) for x in sh.buckets)


def run_one(tmp_dir, data):
    p = tmp_dir / "fuzzed.so"
    p.write_bytes(data)
    try:
        with ElfFile(p) as e:
            exercise(e)
    except ElfError as err:
        msg = str(err)
        assert msg.startswith(str(p)) and "\n" not in msg and len(msg) < 400, msg


@settings(max_examples=700, **SETTINGS)
@given(which=st.integers(0, 2), muts=st.lists(MUTATION, min_size=1, max_size=6),
       cut=st.none() | st.floats(0, 1))
def test_mutated_libraries(bases, tmp_path_factory, which, muts, cut):
    name, data, regs = bases[which]
    buf = bytearray(data)
    for ri, pos, fmt, val in muts:
        start, length = regs[ri % len(regs)]
        size = struct.calcsize(fmt)
        off = start + int(pos * max(length - size, 0))
        if off + size <= len(buf):
            buf[off:off + size] = struct.pack(fmt, val & ((1 << (8 * size)) - 1))
    if cut is not None:
        buf = buf[:int(cut * len(buf))]
    run_one(tmp_path_factory.getbasetemp(), bytes(buf))


@settings(max_examples=150, **SETTINGS)
@given(which=st.integers(0, 2), cut=st.integers(0, 2 ** 20))
def test_truncated_libraries(bases, tmp_path_factory, which, cut):
    name, data, _ = bases[which]
    run_one(tmp_path_factory.getbasetemp(), data[:cut % (len(data) + 1)])


def test_unmutated_bases_pass(bases, tmp_path):
    """The fuzz targets themselves parse cleanly (else the fuzz proves little)."""
    for name, data, _ in bases:
        p = tmp_path / name
        p.write_bytes(data)
        with ElfFile(p) as e:
            exercise(e)
            if name == "libtiny.so":
                assert e.tls and e.relr_addresses() and e.sysv_hash_table and e.gnu_hash_table
                assert {v.name for v in e.versions.values()} >= {"V1", "V2"}


WORDS = st.lists(st.integers(0, 2 ** 64 - 1) | st.sampled_from([0, 1, 3, 0x1000, 2 ** 64 - 1]), max_size=60)


def qview(words):
    return memoryview(struct.pack(f"<{len(words)}Q", *words)).cast("Q")


@settings(max_examples=400, **SETTINGS)
@given(words=WORDS, limit=st.integers(-1, 5000), lo=st.integers(0, 2 ** 64 - 1), hi=st.integers(0, 2 ** 64 - 1))
def test_decoders_on_arbitrary_words(words, limit, lo, hi):
    q = qview(words)
    try:
        n = elfscan.relr_count(q)
        out = elfscan.decode_relr(q, limit)
        assert len(out) == n and (limit < 0 or n <= limit)
        i = elfscan.first_outside(out, lo, hi, 8)
        assert i == -1 or not (lo <= out[i] and out[i] + 8 <= hi)
    except ValueError:
        pass
    k = len(words) // 3 * 3
    off, typ, sym, add = elfscan.decode_rela(q[:k])
    assert len(off) == len(typ) == len(sym) == len(add) == k // 3
    assert sum(elfscan.type_histogram(typ).values()) == len(typ)
    j = elfscan.first_outside_reloc(off, typ, lo, hi)
    assert -1 <= j < len(off)
    u = memoryview(struct.pack(f"<{2 * len(words)}Q", *words, *words)).cast("I")
    elfscan.u32_range(u)
    elfscan.first_odd(u, limit)
