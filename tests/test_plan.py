"""Plans of real programs, checked three ways: (1) the binary layout against
the C header the launcher compiles; (2) every relocation accounted for, by
replaying the plan (pool image + fixups, imports resolved in this process)
and comparing each relocated word with the engine relocating a fresh copy
directly in this process's scope; (3) real runs: init order against
LD_DEBUG=files, and `ldpool-exec --plan --pool` against native output."""
import ctypes
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

from loader import image as limage
from loader import planformat as pf
from loader import resolve
from loader.errors import ResolveError
from loader.localpool import LocalPool
from loader.plan import build_plan, explain, placements, plan_stats
from loader.scope import Scope

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = ["/usr/bin/xz", "/usr/bin/curl", "/usr/bin/git", "/usr/bin/sqlite3"]
RTLD_DEFAULT = ctypes.c_void_p(0)
libc = ctypes.CDLL(None)
libc.dlvsym.restype = libc.dlsym.restype = ctypes.c_void_p
libc.dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
libc.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]


@pytest.fixture(scope="module")
def pool():
    with LocalPool() as p:
        yield p


def _offsets(fmt, fields):
    chars = re.findall(r"(\d*)([a-zA-Z])", fmt[1:])
    flat = [c for n, c in chars for _ in range(int(n or 1))]
    return {f: struct.calcsize("<" + "".join(flat[:i])) for i, f in enumerate(fields)}


def test_format_matches_c_header(tmp_path):
    src = tmp_path / "sizes.c"
    fields = ["l_addr", "phnum", "fix_first", "entry", "tls_image", "tls_tpoff", "tls_modid",
              "relro_start", "eh_frame_hdr"]
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include "plan.h"\nint main(void){\n'
                   'printf("%zu %zu %zu %zu %zu\\n", sizeof(struct ldp_plan_hdr), sizeof(struct ldp_obj),'
                   ' sizeof(struct ldp_seg), sizeof(struct ldp_fix), sizeof(struct ldp_import));\n'
                   'printf("%zu %zu %zu\\n", offsetof(struct ldp_plan_hdr, first_index),'
                   ' offsetof(struct ldp_plan_hdr, static_tls_size), offsetof(struct ldp_plan_hdr, lease));\n'
                   + "".join(f'printf("%zu\\n", offsetof(struct ldp_obj, {f}));\n' for f in fields)
                   + "return 0;}\n")
    subprocess.run(["cc", "-I", os.path.join(REPO, "_native", "launcher"), "-o", tmp_path / "sizes", src],
                   check=True)
    out = subprocess.run([tmp_path / "sizes"], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out[:5]] == [pf.HDR.size, pf.OBJ.size, pf.SEG.size, pf.FIX.size, pf.IMP.size]
    assert [int(x) for x in out[5:8]] == [44, 112, 136]
    offs = _offsets("<5Q2I2I2I2I3Q6Q4Qq2I3Q", pf.OBJ_FIELDS)
    assert [int(x) for x in out[8:]] == [offs[f] for f in fields]


def l_addr_here(soname):
    """Load bias of a glibc-family object in this process."""
    h = ctypes.CDLL(soname, mode=os.RTLD_NOLOAD | os.RTLD_NOW)._handle
    lm = ctypes.c_void_p()
    assert libc.dlinfo(ctypes.c_void_p(h), 2, ctypes.byref(lm)) == 0
    return ctypes.c_uint64.from_address(lm.value).value


def import_address(p, i):
    name, ver, flags, _ = p.imports[i]
    n = p.string(name).encode()
    a = libc.dlvsym(RTLD_DEFAULT, n, p.string(ver).encode()) if ver != pf.NONE else libc.dlsym(RTLD_DEFAULT, n)
    assert a or flags & pf.IMP_WEAK, p.string(name)
    return a or 0


class Memory:
    """The plan replayed in Python: each object's pool image, then its fixups."""

    def __init__(self, p, pool, placed):
        self.p, self.objs = p, []
        for o, pl in zip(p.objects, placed):
            mem = bytearray(pool.image_bytes(pl))
            self.objs.append((o["map_start"], mem))
        # the slot table as the launcher fills it: stub k jumps to slot k
        self.slots = {k: import_address(p, imp) for k, imp, _g, _f in p.slots}

    def through_stub(self, value):
        """The function a word that holds a stub address reaches."""
        h = self.p.hdr
        if h["stubs_addr"] <= value < h["stubs_addr"] + h["stubs_size"]:
            return self.slots[(value - h["stubs_addr"]) // 8]
        return value

    def where(self, addr):
        for start, mem in self.objs:
            if start <= addr < start + len(mem):
                return mem, addr - start
        raise AssertionError(f"{addr:#x} outside every object")

    def read(self, addr, n=8):
        mem, off = self.where(addr)
        return int.from_bytes(mem[off:off + n], "little")

    def write(self, addr, value, n=8):
        mem, off = self.where(addr)
        mem[off:off + n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    def apply(self):
        p = self.p
        first = p.hdr["first_index"]
        for o in reversed(p.objects):
            for addr, t, sym, addend, aux in p.fixups[o["fix_first"]:o["fix_first"] + o["fix_count"]]:
                if t == pf.FIX_ABS64:
                    self.write(addr, addend)
                elif t == pf.FIX_SYM64:
                    self.write(addr, import_address(p, sym) + addend)
                elif t == pf.FIX_TPOFF:
                    self.write(addr, p.objects[sym - first]["tls_tpoff"] + addend)
                elif t == pf.FIX_DTPMOD:
                    self.write(addr, p.objects[sym - first]["tls_modid"])
                elif t == pf.FIX_COPY:
                    if sym == pf.NONE:
                        data = self.read(aux, addend).to_bytes(addend, "little") if addend else b""
                    else:
                        data = ctypes.string_at(import_address(p, sym), addend)
                    mem, off = self.where(addr)
                    mem[off:off + addend] = data
                else:
                    raise AssertionError(f"fixup type {t} not expected in these programs")


def replay_and_check(prog, pool, env=None):
    res = resolve.resolve_program(prog, env=env or {})
    blob, counts = build_plan(res, pool, with_stats=True)
    p = pf.unpack(blob)
    text = explain(blob)
    assert text.count("\n[") == len(p.objects) and "init:" in text
    pooled = [o for o in res.objects if not o.is_glibc]
    placed = list(placements(res.objects, pool).values())    # the placements the plan got
    assert [pl.map_start for pl in placed] == [o["map_start"] for o in p.objects]
    assert len(p.objects) == len(pooled)
    for so in (p.string(g) for g in p.glibc):
        ctypes.CDLL(so, mode=os.RTLD_GLOBAL)
    mem = Memory(p, pool, placed)
    mem.apply()
    from _native import reloc
    entries, index = [], {}
    for o in res.objects:
        if o.is_glibc:
            entries.append((o.elf, l_addr_here(o.soname or os.path.basename(o.path)), True))
        else:
            index[len(entries)] = len(index)
            entries.append((o.elf, placed[len(index) - 1].base, False))
    scope = Scope(entries)
    checked = 0
    for k, g in index.items():
        o, pl = p.objects[g], placed[g]
        lay = pl.info.layout
        fs = counts[g]
        # (a) every relocation is accounted for
        assert sum(fs.counts.values()) == fs.nrelocs, (prog, dict(fs.counts))
        # (b) the replayed words equal the engine's direct relocation here
        b = reloc.bind(scope, k)
        fresh = bytearray(lay.span)
        limage.write_memory_image(entries[k][0], lay, fresh)
        modid = ctypes.c_int64 * len(entries)
        tls_modid = [0] * len(entries)
        tls_tpoff = [0] * len(entries)
        for kk, gg in index.items():
            tls_modid[kk], tls_tpoff[kk] = p.objects[gg]["tls_modid"], p.objects[gg]["tls_tpoff"]
        import array
        deferred = set(reloc.apply(fresh, o["map_start"], b, None, array.array("q", tls_modid),
                                   array.array("q", tls_tpoff)))
        for r in range(b.count):
            if r in deferred or b.rtype[r] in (0, 5):
                continue
            n = 4 if b.rtype[r] in (2, 10, 11, 32) else 8
            ours = mem.read(b.addr[r], n)
            if n == 8:
                ours = mem.through_stub(ours)
            theirs = int.from_bytes(fresh[b.addr[r] - o["map_start"]:b.addr[r] - o["map_start"] + n], "little")
            assert ours == theirs, (prog, o and p.string(o["path"]), hex(b.addr[r] - pl.base), b.rtype[r])
            checked += 1
        del modid
    return p, checked, res


@pytest.mark.parametrize("prog", PROGRAMS)
def test_plan_replays_to_what_the_engine_computes(prog, pool):
    p, checked, _ = replay_and_check(prog, pool)
    assert checked > 100
    # segments: contiguous page-aligned cover of each range; shared ones read-only
    for o in p.objects:
        segs = p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]
        assert segs[0][0] == o["map_start"] and segs[-1][0] + segs[-1][1] == o["map_end"]
        for (a, n, off, prot, kind), nxt in zip(segs, segs[1:] + [None]):
            assert a % 4096 == 0 and n % 4096 == 0 and n > 0
            assert nxt is None or nxt[0] == a + n
            if kind == pf.SEG_SHARED:
                assert not prot & 2 and off + n <= p.hdr["pool_size"]
            if kind == pf.SEG_FILE:
                assert not prot & 2 and off % 4096 == 0 and off < o["file_size"]
        written = {f[0] & ~4095 for f in p.fixups[o["fix_first"]:o["fix_first"] + o["fix_count"]]}
        for a, n, off, prot, kind in segs:
            if kind in (pf.SEG_SHARED, pf.SEG_FILE):
                assert not any(a <= w < a + n for w in written)
    rows, total = plan_stats(p)
    assert total["shared"] + total["file"] > total["private"]
    # text comes from the files
    assert total["file"] > total["shared"]


@pytest.mark.parametrize("prog,args", [("/usr/bin/curl", ["--version"]), ("/usr/bin/git", ["--version"]),
                                       ("/usr/bin/python3", ["-c", "pass"])])
def test_init_order_is_glibcs(prog, args, pool):
    env = dict(os.environ, LD_DEBUG="files")
    err = subprocess.run([prog, *args], capture_output=True, text=True, env=env, timeout=60).stderr
    ran = [os.path.realpath(m) for m in re.findall(r"calling init: (\S+)", err)]
    res = resolve.resolve_program(prog, env={})
    initial = {os.path.realpath(o.path) for o in res.objects[1:] if not o.is_glibc}
    expected = [x for x in ran if x in initial]     # later dlopens (curl's sasl plugins) left out
    assert len(expected) == len(initial)
    p = pf.unpack(build_plan(res, pool))
    got = [os.path.realpath(p.string(p.objects[i]["path"])) for i in p.init]
    assert got == expected


def test_undefined_symbol_is_an_error(tmp_path, pool):
    (tmp_path / "a.c").write_text("extern void missing_symbol_xyz(void); void a(void) { missing_symbol_xyz(); }\n")
    (tmp_path / "m.c").write_text("void a(void); int main(int argc, char **argv) { if (argc > 1) a(); return 0; }\n")
    cc = ["cc", "-fPIC", "-O0"]
    for now, name in ((True, "now"), (False, "lazy")):
        d = tmp_path / name
        d.mkdir()
        flags = ["-Wl,-z,now"] if now else ["-Wl,-z,lazy"]
        subprocess.run(cc + ["-shared", "-o", d / "liba.so", tmp_path / "a.c"] + flags, check=True)
        subprocess.run(cc + ["-o", d / "exe", tmp_path / "m.c", "-L", d, "-la", "-Wl,-rpath," + str(d),
                             "-Wl,--allow-shlib-undefined"] + flags, check=True)
        res = resolve.resolve_program(str(d / "exe"), env={})
        if now:
            with pytest.raises(ResolveError, match=r"symbol lookup error: .*liba.so: undefined symbol: missing_symbol_xyz"):
                build_plan(res, pool)
            assert ResolveError.exit_code == 127
        else:
            # ld.so fails only at the call
            p = pf.unpack(build_plan(res, pool))
            lib = p.objects[1]
            imps = {p.string(p.imports[f[2]][0]): p.imports[f[2]][2]
                    for f in p.fixups[lib["fix_first"]:lib["fix_first"] + lib["fix_count"]] if f[1] == pf.FIX_SYM64}
            assert imps["missing_symbol_xyz"] == pf.IMP_FUNC
            assert via_launcher(d, [str(d / "exe")]).returncode == 0
            called = via_launcher(d, [str(d / "exe"), "call"])
            native = subprocess.run([d / "exe", "call"], capture_output=True, text=True)
            assert called.returncode == native.returncode == 127
            assert b"undefined symbol: missing_symbol_xyz" in called.stderr


def test_tls_blocks(tmp_path, pool):
    (tmp_path / "t.c").write_text(
        "__thread int gd_var = 5;\n"
        "__attribute__((tls_model(\"initial-exec\"))) __thread long ie_var[3] = {1, 2, 3};\n"
        "int get_gd(void) { return gd_var; }\nlong get_ie(void) { return ie_var[1]; }\n")
    (tmp_path / "m.c").write_text(
        "extern __thread int gd_var; int get_gd(void); long get_ie(void);\n"
        "__thread char own[100] = {7};\n"
        "int main(void) { return own[0] + get_gd() + (int)get_ie() + gd_var; }\n")
    subprocess.run(["cc", "-fPIC", "-shared", "-o", tmp_path / "libt.so", tmp_path / "t.c"], check=True)
    subprocess.run(["cc", "-o", tmp_path / "exe", tmp_path / "m.c", "-L", tmp_path, "-lt",
                    "-Wl,-rpath," + str(tmp_path)], check=True)
    res = resolve.resolve_program(str(tmp_path / "exe"), env={})
    p = pf.unpack(build_plan(res, pool))
    main, lib = p.objects[0], p.objects[1]
    assert main["tls_memsz"] == 100 and main["tls_tpoff"] == -((100 + main["tls_align"] - 1) // main["tls_align"] * main["tls_align"])
    assert lib["tls_tpoff"] <= main["tls_tpoff"] - lib["tls_memsz"]
    assert lib["tls_tpoff"] % lib["tls_align"] == 0
    assert p.hdr["static_tls_size"] == -lib["tls_tpoff"]
    assert lib["tls_modid"] and main["tls_modid"] and lib["tls_modid"] != main["tls_modid"]
    kinds = {(f[1], f[2]) for f in p.fixups}
    assert (pf.FIX_TPOFF, 1) in kinds          # the library's own initial-exec access
    assert (pf.FIX_DTPMOD, 1) in kinds         # gd_var from the program and the library
    assert subprocess.run([tmp_path / "exe"]).returncode == 7 + 5 + 2 + 5
    assert via_launcher(tmp_path, [str(tmp_path / "exe")]).returncode == 7 + 5 + 2 + 5


def via_launcher(tmp_path, argv, **kw):
    """Run argv through `python -m loader.plan` + `ldpool-exec --plan --pool`."""
    exe = shutil.which("ldpool-exec")
    if exe is None:
        pytest.fail("ldpool-exec is not on PATH: run tools/dev-build")
    plan, poolf = tmp_path / "prog.plan", f"/dev/shm/ldpool-test-plan-{os.getpid()}"
    # the loader and _native this test imported (a checkout or an installed
    # package); -P keeps a checkout in the cwd from shadowing an installed one
    import _native
    import loader
    roots = {os.path.dirname(os.path.dirname(m.__file__)) for m in (loader, _native)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sorted(roots)))
    try:
        subprocess.run([sys.executable, "-P", "-m", "loader.plan", argv[0], "-o", plan, "--pool-file", poolf],
                       check=True, env=env, capture_output=True)
        return subprocess.run([exe, "--plan", plan, "--pool", poolf] + argv, capture_output=True,
                              timeout=60, **kw)
    finally:
        if os.path.exists(poolf):
            os.unlink(poolf)


def test_debug_entry_point_runs_xz(tmp_path):
    """The contract with the launcher's debug mode: python -m loader.plan
    writes plan + pool, ldpool-exec --plan --pool runs the program."""
    data = os.urandom(1000) * 50
    packed = via_launcher(tmp_path, ["/usr/bin/xz", "-c"], input=data)
    assert packed.returncode == 0, packed.stderr
    assert subprocess.run(["xz", "-dc"], input=packed.stdout, capture_output=True).stdout == data
    st = via_launcher(tmp_path, ["/usr/bin/xz", "--bogus"])
    assert st.returncode == subprocess.run(["xz", "--bogus"], capture_output=True).returncode == 1


def test_interposition_by_preload(tmp_path, pool):
    """The canonical image of libA binds f to libB; with LD_PRELOAD=libC
    (which defines f too) the process binds it to libC: the plan must
    override the image's GOT entry, and leave everything else alone."""
    (tmp_path / "b.c").write_text("int f(void) { return 1; } int g(void) { return 10; }\n")
    (tmp_path / "c.c").write_text("int f(void) { return 100; }\n")
    (tmp_path / "a.c").write_text("int f(void); int g(void); int (*pf)(void) = f;\n"
                                  "int a(void) { return f() + g() + pf(); }\n")
    (tmp_path / "m.c").write_text("int a(void); int main(void) { return a(); }\n")
    cc = ["cc", "-fPIC", "-O1"]
    subprocess.run(cc + ["-shared", "-o", tmp_path / "libb.so", tmp_path / "b.c"], check=True)
    subprocess.run(cc + ["-shared", "-o", tmp_path / "libc_pre.so", tmp_path / "c.c"], check=True)
    subprocess.run(cc + ["-shared", "-o", tmp_path / "liba.so", tmp_path / "a.c", "-L", tmp_path, "-lb",
                         "-Wl,-rpath," + str(tmp_path)], check=True)
    subprocess.run(cc + ["-o", tmp_path / "exe", tmp_path / "m.c", "-L", tmp_path, "-la",
                         "-Wl,-rpath," + str(tmp_path)], check=True)
    exe = str(tmp_path / "exe")
    env = {"LD_PRELOAD": str(tmp_path / "libc_pre.so")}
    assert subprocess.run([exe], env=env).returncode == 210
    p, checked, res = replay_and_check(exe, pool, env)
    names = [os.path.basename(p.string(o["path"])) for o in p.objects]
    assert names == ["exe", "libc_pre.so", "liba.so", "libb.so"]
    assert p.objects[1]["flags"] & pf.OBJ_PRELOAD
    liba, libc_pre = p.objects[2], p.objects[1]
    f_pre = res.objects[1].elf
    f_addr = libc_pre["l_addr"] + next(f_pre.symbol(i).value for i in range(f_pre.nsyms)
                                      if f_pre.symbol(i).name == "f")
    fixes = p.fixups[liba["fix_first"]:liba["fix_first"] + liba["fix_count"]]
    overrides = [f for f in fixes if f[1] == pf.FIX_ABS64 and f[3] == f_addr]
    assert len(overrides) == 2          # the PLT slot of f and the pointer pf
    # (and glibc functions the canonical scope left unbound, here liba's
    # weak __cxa_finalize: libc is not among its own DT_NEEDED, go to stubs)
    stubs = range(p.hdr["stubs_addr"], p.hdr["stubs_addr"] + p.hdr["stubs_size"])
    assert all(f[1] != pf.FIX_ABS64 or f[3] == f_addr or f[3] in stubs for f in fixes)
    # without the preload the image is right as it is
    p2, _, _ = replay_and_check(exe, pool)
    a2 = p2.objects[1]
    assert not [f for f in p2.fixups[a2["fix_first"]:a2["fix_first"] + a2["fix_count"]]
                if f[1] == pf.FIX_ABS64 and f[3] not in stubs]


def test_dlopen_plan_init_order_and_indices(pool):
    """python3 importing _ssl: the dlopen plan holds only the new objects,
    numbered after the program's, initialised in glibc's order."""
    prog = "/usr/bin/python3"
    ext = subprocess.run([prog, "-c", "import _ssl; print(_ssl.__file__)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    env = dict(os.environ, LD_DEBUG="files")
    err = subprocess.run([prog, "-c", "import _ssl"], capture_output=True, text=True, env=env).stderr
    ran = [os.path.realpath(m) for m in re.findall(r"calling init: (\S+)", err)]
    res = resolve.resolve_program(prog, env={})
    n0 = len([o for o in res.objects if not o.is_glibc])
    pf.unpack(build_plan(res, pool))
    new = resolve.resolve_dlopen(res, ext, res.objects[0])
    from loader.plan import build_dlopen_plan
    p = pf.unpack(build_dlopen_plan(res, new, pool, first_index=n0))
    assert p.hdr["first_index"] == n0 and p.hdr["main_obj"] == pf.NONE
    assert [p.string(o["path"]) for o in p.objects] == [o.path for o in new if not o.is_glibc]
    assert all(n0 <= i < n0 + len(p.objects) for i in p.init)
    got = [os.path.realpath(p.string(p.objects[i - n0]["path"])) for i in p.init]
    assert got == [x for x in ran if x in set(got)]
    assert got[-1] == os.path.realpath(ext)


def test_missing_version_is_an_error(tmp_path, pool):
    (tmp_path / "v1.map").write_text("V1 { global: foo; local: *; };\n")
    (tmp_path / "v2.map").write_text("V2 { global: foo; local: *; };\n")
    (tmp_path / "v.c").write_text("int foo(void) { return 1; }\n")
    (tmp_path / "m.c").write_text("int foo(void); int main(void) { return foo(); }\n")
    lib = ["cc", "-shared", "-fPIC", "-o", tmp_path / "libv.so", tmp_path / "v.c"]
    subprocess.run(lib + ["-Wl,--version-script=" + str(tmp_path / "v1.map")], check=True)
    subprocess.run(["cc", "-o", tmp_path / "exe", tmp_path / "m.c", "-L", tmp_path, "-lv",
                    "-Wl,-rpath," + str(tmp_path)], check=True)
    build_plan(resolve.resolve_program(str(tmp_path / "exe"), env={}), pool)
    subprocess.run(lib + ["-Wl,--version-script=" + str(tmp_path / "v2.map")], check=True)
    native = subprocess.run([tmp_path / "exe"], capture_output=True, text=True)
    assert native.returncode != 0 and "version `V1' not found" in native.stderr
    resolve.clear_caches()
    with pytest.raises(ResolveError, match="libv.so: version `V1' not found"):
        build_plan(resolve.resolve_program(str(tmp_path / "exe"), env={}), pool)


def test_identical_files_as_two_objects(tmp_path, pool):
    """ld.so loads two identical files without SONAME as two objects: each
    needs its own copy of the image, at its own address."""
    (tmp_path / "l.c").write_text("static int counter; int bump(void) { return ++counter; }\n")
    (tmp_path / "m.c").write_text(
        "#include <dlfcn.h>\nint main(void) {\n"
        "  int (*a)(void) = dlsym(dlopen(\"liba.so\", RTLD_NOW), \"bump\");\n"
        "  int (*b)(void) = dlsym(dlopen(\"libb.so\", RTLD_NOW), \"bump\");\n"
        "  a(); a(); return a() * 10 + b(); }\n")
    for n in ("a", "b"):
        subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / f"lib{n}.so", tmp_path / "l.c"], check=True)
    subprocess.run(["cc", "-o", tmp_path / "exe", tmp_path / "m.c", "-Wl,--no-as-needed", "-L", tmp_path,
                    "-la", "-lb", "-Wl,-rpath," + str(tmp_path)], check=True)
    assert (tmp_path / "liba.so").read_bytes() == (tmp_path / "libb.so").read_bytes()
    p, _, _ = replay_and_check(str(tmp_path / "exe"), pool)
    ranges = sorted((o["map_start"], o["map_end"]) for o in p.objects)
    assert len(ranges) == 3 and all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert subprocess.run([tmp_path / "exe"]).returncode == 31
    assert via_launcher(tmp_path, [str(tmp_path / "exe")]).returncode == 31
