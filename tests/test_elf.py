"""loader.elf against pyelftools on every ELF shared object of the system, and
its one-line errors on broken input (patched copies of real libraries)."""
import os
import random
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf import enums as E
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection, GNUVerSymSection

from _native import elfscan
from loader import elf as L
from loader.elf import DT, ElfFile, identify
from loader.errors import ElfError, LdpoolError

LIBDIR = Path("/lib/x86_64-linux-gnu")
# above this many relocations, compare a deterministic sample with pyelftools
# (it decodes ~120k relocations/s); counts and the rest are still compared
FULL_RELOCS = 40000
SAMPLE = 2000


def shared_objects():
    """Every distinct ELF file named *.so* in LIBDIR (linker scripts such as
    libc.so are text and are skipped)."""
    seen, out = set(), []
    for p in sorted(LIBDIR.glob("*.so*")):
        if not p.is_file():
            continue
        real = os.path.realpath(p)
        if real in seen:
            continue
        seen.add(real)
        if identify(p) is not None:
            out.append(p)
    return out


SOS = shared_objects()
P_TYPE = dict(E.ENUM_P_TYPE_BASE)
D_TAG = {**E.ENUM_D_TAG_COMMON, **E.ENUM_D_TAG_SOLARIS}


def num(enum, v):
    """pyelftools gives known enum values as names: back to numbers."""
    return enum[v] if isinstance(v, str) else v


def test_enough_shared_objects():
    assert len(SOS) > 100, f"only {len(SOS)} ELF shared objects in {LIBDIR}"


@pytest.mark.parametrize("path", SOS, ids=[p.name for p in SOS])
def test_against_pyelftools(path):
    with open(path, "rb") as f:
        ref = ELFFile(f)
        with ElfFile(path) as e:
            check_segments(e, ref)
            dseg = next((s for s in ref.iter_segments() if isinstance(s, DynamicSegment)), None)
            assert dseg is not None and e.dynamic
            check_dynamic(e, dseg)
            check_symbols(e, ref, dseg)
            check_versions(e, ref)
            check_relocations(e, dseg)
            check_extras(e, ref)


def check_segments(e, ref):
    assert len(e.segments) == ref.num_segments()
    for mine, seg in zip(e.segments, ref.iter_segments()):
        h = seg.header
        assert mine == (num(P_TYPE, h.p_type), h.p_flags, h.p_offset, h.p_vaddr, h.p_paddr,
                        h.p_filesz, h.p_memsz, h.p_align)


def check_dynamic(e, dseg):
    tags = [(num(D_TAG, t.entry.d_tag), t.entry.d_val) for t in dseg.iter_tags()]
    assert tags[-1][0] == 0
    assert e.dynamic == tags[:-1]
    by = lambda name: [getattr(t, name) for t in dseg.iter_tags("DT_" + name.upper())]  # noqa: E731
    assert e.needed == by("needed")
    assert [e.soname] == (by("soname") or [None])
    assert [e.rpath] == (by("rpath") or [None])[:1]
    assert [e.runpath] == (by("runpath") or [None])[:1]


def check_symbols(e, ref, dseg):
    n = e.nsyms
    assert n == dseg.num_symbols()
    dynsym = ref.get_section_by_name(".dynsym")
    if dynsym is not None:
        assert n == dynsym.num_symbols() == e.section_dynsym_count
    table = dynsym if dynsym is not None else dseg
    for i, s in enumerate(table.iter_symbols()):
        x = s.entry
        other = (num(E.ENUM_ST_LOCAL, x.st_other.local) << 5) | num(E.ENUM_ST_VISIBILITY, x.st_other.visibility)
        info = (num(E.ENUM_ST_INFO_BIND, x.st_info.bind) << 4) | num(E.ENUM_ST_INFO_TYPE, x.st_info.type)
        assert e.symbol(i) == (s.name, info, other, num(E.ENUM_ST_SHNDX, x.st_shndx), x.st_value, x.st_size), i
    assert len(e.symtab_bytes) == n * L.SYM_SIZE


def check_versions(e, ref):
    want = {}
    versym = None
    for sec in ref.iter_sections():
        if isinstance(sec, GNUVerDefSection):
            for v, auxs in sec.iter_versions():
                names = [a.name for a in auxs]
                if names:
                    want[v["vd_ndx"]] = (v["vd_ndx"], names[0], v["vd_hash"], v["vd_flags"], None)
        elif isinstance(sec, GNUVerNeedSection):
            for v, auxs in sec.iter_versions():
                for a in auxs:
                    want[a["vna_other"] & 0x7FFF] = (a["vna_other"] & 0x7FFF, a.name, a["vna_hash"],
                                                    a["vna_flags"], v.name)
        elif isinstance(sec, GNUVerSymSection):
            versym = sec
    assert {k: tuple(v) for k, v in e.versions.items()} == want
    for v in e.versions.values():
        assert v.hash == L.elf_hash(v.name.encode())
    if versym is None:
        assert e.versym is None
    else:
        assert e.versym.tobytes() == versym.data()
        assert len(e.versym) == e.nsyms


def ref_rela(table, n, indices):
    out = []
    for i in indices:
        r = table.get_relocation(i)
        out.append((r["r_offset"], r["r_info_type"], r["r_info_sym"], r["r_addend"]))
    return out


def check_relocations(e, dseg):
    tables = dseg.get_relocation_tables()
    rel = e.relocations()
    nr = tables["RELA"].num_relocations() if "RELA" in tables else 0
    nj = tables["JMPREL"].num_relocations() if "JMPREL" in tables else 0
    assert rel.n_rela == nr and len(rel) == nr + nj
    hist = rel.histogram()
    assert sum(hist.values()) == len(rel)
    for name, base, count in (("RELA", 0, nr), ("JMPREL", nr, nj)):
        if not count:
            continue
        idx = range(count) if count <= FULL_RELOCS else \
            sorted(random.Random(str(e.path) + name).sample(range(count), SAMPLE) + [0, count - 1])
        mine = [(rel.offset[base + i], rel.type[base + i], rel.sym[base + i], rel.addend[base + i]) for i in idx]
        assert mine == ref_rela(tables[name], count, idx), name
    if "RELR" in tables:
        assert list(e.relr_addresses()) == [r["r_offset"] for r in tables["RELR"].iter_relocations()]
    else:
        assert len(e.relr_addresses()) == 0


def check_extras(e, ref):
    """Accessors with no pyelftools twin: cross-checked against sections/notes."""
    secs = {s.name: s for s in ref.iter_sections()}
    assert [s.name for s in e.sections] == list(secs)
    for name, arr in ((".init_array", e.init_array), (".fini_array", e.fini_array),
                      (".preinit_array", e.preinit_array)):
        if name in secs:
            assert arr == (secs[name]["sh_addr"], secs[name]["sh_size"] // 8)
            assert len(e.array_words(arr)) == arr.count
        else:
            assert arr is None or arr.count == 0
    for fn in (e.init, e.fini):  # (-Wl,-init= may point them anywhere in the text)
        assert fn is None or any(s.flags & L.PF_X and s.vaddr <= fn < s.vaddr + s.filesz for s in e.loads)
    ids = [n["n_desc"] for s in ref.iter_sections() if s["sh_type"] == "SHT_NOTE"
           for n in s.iter_notes() if n["n_type"] == "NT_GNU_BUILD_ID"]
    assert (e.build_id.hex() if e.build_id else None) == (ids[0] if ids else None)
    tls = e.segment(L.PT_TLS)
    assert e.tls == (tls if tls is not None and tls.memsz else None)
    if e.tls is not None and ".tdata" in secs:
        assert e.tls_image.tobytes() == secs[".tdata"].data()[:e.tls.filesz]
    assert e.relro == e.segment(L.PT_GNU_RELRO)
    if ".eh_frame_hdr" in secs:
        assert e.eh_frame_hdr.vaddr == secs[".eh_frame_hdr"]["sh_addr"]
    gs = e.segment(L.PT_GNU_STACK)
    assert e.stack_flags == (gs.flags if gs else L.PF_R | L.PF_W | L.PF_X)
    gh = e.gnu_hash_table
    if ".gnu.hash" in secs:
        p = secs[".gnu.hash"].params
        assert (gh.nbuckets, gh.symoffset, gh.bloom_size, gh.bloom_shift) == \
            (p.nbuckets, p.symoffset, p.bloom_size, p.bloom_shift)
        assert list(gh.bloom) == list(p.bloom) and list(gh.buckets) == list(p.buckets)
        assert gh.symoffset + len(gh.chains) == secs[".gnu.hash"].get_number_of_symbols()
    if ".hash" in secs:
        sh = e.sysv_hash_table
        p = secs[".hash"].params
        assert (sh.nbucket, sh.nchain) == (p.nbuckets, p.nchains)
        assert list(sh.buckets) == list(p.buckets) and list(sh.chains) == list(p.chains)


# ------------------------------------------------------------------ lookups
def test_hash_functions():
    assert L.elf_hash(b"printf") == 0x077905A6
    assert L.gnu_hash(b"") == 5381 and L.gnu_hash(b"printf") == 0x156B2BB8


def gnu_lookup(e, name):
    """A plain GNU-hash lookup over the views, as ld.so walks them."""
    gh = e.gnu_hash_table
    h = L.gnu_hash(name)
    word = gh.bloom[(h // 64) % gh.bloom_size]
    if not (word >> (h % 64)) & (word >> ((h >> gh.bloom_shift) % 64)) & 1:
        return None
    i = gh.buckets[h % gh.nbuckets]
    while i:
        c = gh.chains[i - gh.symoffset]
        if (c | 1) == (h | 1) and e.symbol(i).name == name.decode():
            return i
        if c & 1:
            return None
        i += 1
    return None


def sysv_lookup(e, name):
    sh = e.sysv_hash_table
    i = sh.buckets[L.elf_hash(name) % sh.nbucket]
    while i:
        if e.symbol(i).name == name.decode():
            return i
        i = sh.chains[i]
    return None


def test_hash_tables_find_every_defined_symbol():
    with ElfFile(LIBDIR / "libc.so.6") as e:
        assert e.gnu_hash_table and e.sysv_hash_table
        for i in range(e.gnu_hash_table.symoffset, e.nsyms):
            name = e.symbol(i).name.encode()
            assert gnu_lookup(e, name) is not None and sysv_lookup(e, name) is not None, name
        assert gnu_lookup(e, b"no_such_symbol_here") is None


def test_relocations_match_readelf_llvm():
    """The biggest library, every relocation, against readelf -rW."""
    import subprocess
    path = next((p for p in SOS if p.name.startswith("libLLVM-14")), None)
    if path is None:
        pytest.skip("libLLVM-14 not installed")
    out = subprocess.run(["readelf", "-rW", str(path)], capture_output=True, text=True, check=True).stdout
    offsets = [int(line.split(None, 1)[0], 16) for line in out.splitlines()
               if line[:1] in "0123456789abcdef" and len(line.split()) >= 3 and "R_X86_64" in line]
    rel = ElfFile(path).relocations()
    assert list(rel.offset) == offsets


# ---------------------------------------------------------------- bad input
@pytest.fixture
def libz(tmp_path):
    src = LIBDIR / "libz.so.1"
    dst = tmp_path / "libz.so.1"
    shutil.copyfile(src, dst)
    return dst


def patch(path, off, fmt, *vals):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, *vals))


def dyn_entry_offset(path, tag):
    with ElfFile(path) as e:
        d = e.segment(L.PT_DYNAMIC)
        for i, (t, _) in enumerate(e.dynamic):
            if t == tag:
                return d.offset + 16 * i + 8
    raise AssertionError(f"tag {tag:#x} not in {path}")


def expect(path, *words, access=lambda e: None):
    with pytest.raises(ElfError) as ei:
        with ElfFile(path) as e:
            access(e)
    msg = str(ei.value)
    assert isinstance(ei.value, LdpoolError) and "\n" not in msg and msg.startswith(str(path))
    for w in words:
        assert w in msg, msg
    return msg


def test_not_elf(tmp_path):
    p = tmp_path / "script.so"
    p.write_text("/* GNU ld script */\nGROUP ( libc.so.6 )\n")
    expect(p, "not an ELF file")
    p.write_bytes(b"MZ")
    expect(p, "not an ELF file")
    p.write_bytes(b"")
    expect(p, "not an ELF file")


def test_missing_and_directory(tmp_path):
    expect(tmp_path / "nope.so", "no such file")
    expect(tmp_path, "is a directory")
    os.mkfifo(tmp_path / "fifo")
    expect(tmp_path / "fifo", "not a regular file")


def test_wrong_class(libz):
    patch(libz, 4, "B", L.ELFCLASS32)
    expect(libz, "ELFCLASS32")


def test_wrong_machine(libz):
    patch(libz, 18, "<H", L.EM_AARCH64)
    expect(libz, "wrong ELF machine 183")


def test_wrong_type(libz):
    patch(libz, 16, "<H", 1)
    expect(libz, "not an executable or shared object")


@pytest.mark.parametrize("where", ["ident", "header", "phdrs", "dynamic", "tables", "end"])
def test_truncated(libz, where):
    e = ElfFile(libz)
    d = e.segment(L.PT_DYNAMIC)
    cut = {"ident": 10, "header": 40, "phdrs": e.e_phoff + L.PHDR.size * 2 + 5,
           "dynamic": d.offset + d.filesz // 2, "tables": e.offset_of(e.dyn[DT["SYMTAB"]]) + 100,
           "end": e.size - 1}[where]
    e.close()
    os.truncate(libz, cut)
    # the section headers sit after the segments: only reading them notices
    expect(libz, "truncated", access=lambda e: e.sections)


@pytest.mark.parametrize("tag,value,words,access", [
    ("STRTAB", 0x7FFF0000, ("dynamic string table", "not inside a loaded segment"), None),
    ("STRSZ", 0x7FFF0000, ("dynamic string table",), None),
    ("GNU_HASH", 0x7FFF0000, ("DT_GNU_HASH",), lambda e: e.nsyms),
    ("HASH", 0x7FFF0000, ("DT_HASH",), lambda e: e.nsyms),
    ("SYMTAB", 0x7FFF0000, ("dynamic symbol table",), lambda e: e.nsyms),
    ("SYMENT", 16, ("DT_SYMENT",), lambda e: e.nsyms),
    ("RELASZ", 0x7FFF0000, ("DT_RELA",), lambda e: e.relocations()),
    ("RELASZ", 25, ("not a multiple",), lambda e: e.relocations()),
    ("RELAENT", 16, ("DT_RELAENT",), lambda e: e.relocations()),
    ("PLTREL", 17, ("DT_PLTREL",), lambda e: e.relocations()),
    ("VERSYM", 0x7FFF0000, ("DT_VERSYM",), lambda e: e.versym),
    ("VERNEED", 0x7FFF0000, ("DT_VERNEED",), lambda e: e.versions),
    ("VERDEF", 0x7FFF0000, ("DT_VERDEF",), lambda e: e.versions),
    ("INIT_ARRAYSZ", 0x7FFF0000, ("DT_INIT_ARRAY",), lambda e: e.init_array),
    ("INIT_ARRAYSZ", 12, ("not a multiple of 8",), lambda e: e.init_array),
])
def test_bad_dynamic_values(libz, tag, value, words, access):
    with ElfFile(libz) as e:
        if DT[tag] not in e.dyn:  # (DT_HASH): libc has every tag libz lacks
            shutil.copyfile(LIBDIR / "libc.so.6", libz)
    patch(libz, dyn_entry_offset(libz, DT[tag]), "<Q", value)
    expect(libz, *words, access=access or (lambda e: None))


def test_bad_relocation_offset(libz):
    with ElfFile(libz) as e:
        off = e.offset_of(e.dyn[DT["RELA"]])
    patch(libz, off, "<Q", 0x7FFFFFFF0)
    expect(libz, "bad relocation #0", "R_X86_64_RELATIVE", "outside the loaded segments",
           access=lambda e: e.relocations())


def test_bad_relocation_symbol(libz):
    with ElfFile(libz) as e:
        rel = e.relocations()
        i = next(i for i in range(len(rel)) if rel.sym[i])
        off = e.offset_of(e.dyn[DT["RELA"]]) + 24 * i + 8
        rtype = rel.type[i]
    patch(libz, off, "<Q", (50000 << 32) | rtype)
    expect(libz, "symbol index 50000", access=lambda e: e.relocations())


def test_bad_gnu_hash_header(libz):
    with ElfFile(libz) as e:
        off = e.offset_of(e.dyn[DT["GNU_HASH"]])
    patch(libz, off + 8, "<I", 3)
    expect(libz, "bloom filter size 3", access=lambda e: e.nsyms)
    patch(libz, off, "<I", 0)
    expect(libz, "no buckets", access=lambda e: e.nsyms)


def test_bad_verdef_version(libz):
    with ElfFile(libz) as e:
        off = e.offset_of(e.dyn[DT["VERDEF"]])
    patch(libz, off, "<H", 2)
    expect(libz, "Verdef record", access=lambda e: e.versions)


def test_bad_segment_alignment(libz):
    with ElfFile(libz) as e:
        i = next(i for i, s in enumerate(e.segments) if s.type == L.PT_LOAD and s.offset)
        off = e.e_phoff + i * L.PHDR.size + 16  # p_vaddr
        vaddr = e.segments[i].vaddr
    patch(libz, off, "<Q", vaddr + 8)
    expect(libz, "not page-aligned")


def test_relr_decoding():
    q = lambda *w: memoryview(struct.pack(f"<{len(w)}Q", *w)).cast("Q")  # noqa: E731
    assert list(elfscan.decode_relr(q())) == []
    assert list(elfscan.decode_relr(q(0x1000, 0b1011))) == [0x1000, 0x1008, 0x1018]
    # a second bitmap continues 63 words after the first
    assert list(elfscan.decode_relr(q(0x1000, 1 | (1 << 63), 0b11))) == [0x1000, 0x1000 + 8 * 63, 0x1000 + 8 * 64]
    with pytest.raises(ValueError):
        elfscan.decode_relr(q(0b11))
    with pytest.raises(ValueError):
        elfscan.decode_relr(q(0x1000, 2 ** 64 - 1), limit=10)
    assert elfscan.relr_count(q(0x1000, 2 ** 64 - 1)) == 64


def test_rela_decoding():
    words = memoryview(struct.pack("<6Q", 0x10, (7 << 32) | 6, 2 ** 64 - 8, 0x20, 8, 5)).cast("Q")
    off, typ, sym, add = elfscan.decode_rela(words)
    assert (off.typecode, typ.typecode, sym.typecode, add.typecode) == ("Q", "I", "I", "q")
    assert list(off) == [0x10, 0x20] and list(typ) == [6, 8] and list(sym) == [7, 0]
    assert list(add) == [-8, 5]
    assert elfscan.type_histogram(typ) == {6: 1, 8: 1}
    with pytest.raises(ValueError):
        elfscan.decode_rela(words[:4])


def test_reloc_names():
    assert L.reloc_name(1) == "R_X86_64_64" and L.reloc_name(6) == "R_X86_64_GLOB_DAT"
    assert L.reloc_name(999) == "R_X86_64_<unknown 999>"


def test_identify(tmp_path, libz):
    assert identify(libz) == (L.ELFCLASS64, L.EM_X86_64)
    assert identify(tmp_path / "missing") is None
    (tmp_path / "t").write_text("hello world, this is text")
    assert identify(tmp_path / "t") is None


def test_symbol_count_without_hash_tables(libz):
    """No hash table: the .dynsym section gives the count; without section
    headers either, the next table above DT_SYMTAB bounds it."""
    with ElfFile(libz) as e:
        n, syms = e.nsyms, [e.symbol(i) for i in range(e.nsyms)]
        assert DT["HASH"] not in e.dyn and e.section_dynsym_count == n
    patch(libz, dyn_entry_offset(libz, DT["GNU_HASH"]) - 8, "<q", DT["DEBUG"])
    with ElfFile(libz) as e:
        assert e.gnu_hash_table is None and e.nsyms == n
        assert [e.symbol(i) for i in range(n)] == syms
    patch(libz, 0x28, "<Q", 0)  # e_shoff
    with ElfFile(libz) as e:
        assert e.sections == [] and e.section_dynsym_count is None
        assert e.nsyms == n


def test_relasz_covering_plt_relocations(libz):
    """glibc counts PLT relocations once when DT_RELASZ also covers them."""
    with ElfFile(libz) as e:
        before = e.relocations()
        cols = [list(c) for c in (before.offset, before.type, before.sym, before.addend)]
        rela, relasz, jmprel = e.dyn[DT["RELA"]], e.dyn[DT["RELASZ"]], e.dyn[DT["JMPREL"]]
        assert rela + relasz == jmprel, "libz's .rela.plt no longer follows .rela.dyn"
        relasz_new = relasz + e.dyn[DT["PLTRELSZ"]]
    patch(libz, dyn_entry_offset(libz, DT["RELASZ"]), "<Q", relasz_new)
    with ElfFile(libz) as e:
        after = e.relocations()
        assert after.n_rela == before.n_rela
        assert [list(c) for c in (after.offset, after.type, after.sym, after.addend)] == cols
