"""Fuzz: bind/apply/lookup over mutated real libraries give a clean
LdpoolError or a result, never a crash nor another exception.

Mutations hit the tables the engine reads (dynamic section, dynsym, dynstr,
GNU hash, versym, version records, relocations).  Each example runs in a
forked child so that a crash is reported as such instead of killing the
test run.
"""
import os
import pickle
import traceback

from hypothesis import HealthCheck, given, settings, strategies as st

from loader.elf import DT, ElfFile

LIBZ = "/lib/x86_64-linux-gnu/libz.so.1"
USER = "/lib/x86_64-linux-gnu/libxml2.so.2"     # binds to libz: walks its hash tables
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def _regions():
    e = ElfFile(LIBZ)
    regs = []
    dseg = e.segment(2)
    regs.append((dseg.offset, dseg.filesz))
    regs.append((e.symtab_offset, e.nsyms * 24))
    regs.append((e.strtab, e.strsz))
    for tag, size in (("GNU_HASH", 64 + 4 * e.nsyms), ("VERSYM", 2 * e.nsyms), ("VERDEF", 256),
                      ("VERNEED", 128), ("RELA", e.dyn.get(DT["RELASZ"], 0)),
                      ("JMPREL", e.dyn.get(DT["PLTRELSZ"], 0)), ("HASH", 64 + 4 * e.nsyms)):
        if DT[tag] in e.dyn and size:
            off = e.offset_of(e.dyn[DT[tag]])
            regs.append((off, min(size, e.size - off)))
    data = bytes(e.buf)
    e.close()
    return data, regs


DATA, REGIONS = _regions()

mutation = st.tuples(st.integers(0, len(REGIONS) - 1), st.integers(0, 1 << 30),
                     st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1))


def _mutate(muts):
    buf = bytearray(DATA)
    for r, pos, width, value in muts:
        off, size = REGIONS[r]
        at = off + pos % max(size, 1)
        if at + width <= len(buf):
            buf[at:at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(buf)


def _exercise(path):
    from _native import reloc
    from loader.errors import LdpoolError
    from loader.scope import Scope
    from engine_support import file_image
    try:
        mut = ElfFile(path)
        libc = ElfFile(LIBC)
        scope = Scope([(mut, 0x7F0000000000, False), (libc, 0x7F1000000000, True)])
        for name, ver in (("crc32", None), ("deflate", "ZLIB_1.2.0"), ("zlibVersion", None), ("x", "Y")):
            scope.lookup(name, ver, 0)
        b = reloc.bind(scope, 0)
        img, image_addr = file_image(mut, 0x7F0000000000)
        reloc.apply(img, image_addr, b)
        reloc.compare(img, image_addr, b)
        user = Scope([(ElfFile(USER), 0x7E0000000000, False), (mut, 0x7F0000000000, False),
                      (libc, 0x7F1000000000, True)])
        reloc.bind(user, 0)
        return "ok"
    except LdpoolError as e:
        assert "\n" not in str(e)
        return "clean"


def _in_child(path):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            res = _exercise(path)
        except BaseException:
            res = "unclean: " + traceback.format_exc()
        os.write(w, pickle.dumps(res))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"crash: signal {os.WTERMSIG(status)}"
    return pickle.loads(data) if data else "child died silently"


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(mutation, min_size=1, max_size=6))
def test_mutated_libz_never_crashes(tmp_path_factory, muts):
    path = tmp_path_factory.mktemp("fuzz") / "libz.so.1"
    path.write_bytes(_mutate(muts))
    res = _in_child(str(path))
    assert res in ("ok", "clean"), res


def test_unmutated_is_ok(tmp_path):
    path = tmp_path / "libz.so.1"
    path.write_bytes(DATA)
    assert _in_child(str(path)) == "ok"


def test_unknown_relocation_type_names_it(tmp_path):
    e = ElfFile(LIBZ)
    off = e.offset_of(e.dyn[DT["RELA"]])
    e.close()
    buf = bytearray(DATA)
    buf[off + 8:off + 12] = (9).to_bytes(4, "little")      # R_X86_64_GOTPCREL: not dynamic
    path = tmp_path / "libz.so.1"
    path.write_bytes(buf)
    from _native import reloc
    from loader.errors import ElfError
    from loader.scope import Scope
    scope = Scope([(ElfFile(str(path)), 0, False)])
    try:
        reloc.bind(scope, 0)
    except ElfError as err:
        assert "R_X86_64_GOTPCREL" in str(err) and str(path) in str(err)
    else:
        raise AssertionError("no error for an unknown relocation type")
