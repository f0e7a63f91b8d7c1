"""Imports resolved from the plan's libc st_values instead of dlvsym
(plan.h LDP_IMP_LIBC): the values are libc's own (checked against dlvsym in
this process), the launcher uses them only for the libc they were computed
for and only when nothing sits before libc in RTLD_DEFAULT, and
LDPOOL_CHECK_IMPORTS=1 resolves every import both ways in real programs.
Everything is real: the system's libc and programs, the launcher, a broker
on a Unix socket."""
import ctypes
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

from launcher_helpers import env, need, same  # noqa: F401  (env is a fixture)
from loader import planformat as pf
from loader.fixups import LAUNCHER_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTLD_DEFAULT = ctypes.c_void_p(0)
libc = ctypes.CDLL("libc.so.6")
libc.dlvsym.restype = ctypes.c_void_p
libc.dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
libc.dlsym.restype = ctypes.c_void_p
libc.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
USED = re.compile(rb"debug: imports: (\d+) of (\d+) from libc values \(libc (matches|differs)")


@pytest.fixture(scope="module")
def check_env(env):
    return dict(env, LDPOOL_CHECK_IMPORTS="1")


def _libc_l_addr():
    h = ctypes.CDLL("libc.so.6", mode=os.RTLD_NOLOAD | os.RTLD_NOW)._handle
    lm = ctypes.c_void_p()
    assert libc.dlinfo(ctypes.c_void_p(h), 2, ctypes.byref(lm)) == 0
    return h, ctypes.c_uint64.from_address(lm.value).value


def _libc_used(argv, e):
    """(precomputed, imports) of the first plan the launcher resolved."""
    r = subprocess.run(["ldpool-exec", "--no-fallback", "--"] + argv, capture_output=True,
                       env=dict(e, LDPOOL_DEBUG="1"), timeout=300)
    m = USED.search(r.stderr)
    assert m, r.stderr[-2000:]
    assert r.returncode == 0, r.stderr[-2000:]
    return int(m[1]), int(m[2]), m[3] == b"matches"


def test_launcher_names_match_the_built_launcher():
    """fixups.LAUNCHER_NAMES is the launcher's override table plus its
    dynamic exports: a name the launcher answers is never precomputed."""
    src = open(os.path.join(REPO, "_native", "launcher", "fixup.c")).read()
    table = src[src.index("overrides[] = {"):src.index("};", src.index("overrides[] = {"))]
    overrides = set(re.findall(r'\{"([^"]+)", \(void \*\)', table))
    assert "__libc_start_main" in overrides and "dlvsym" in overrides
    exe = os.path.realpath(shutil.which("ldpool-exec"))
    out = subprocess.run(["readelf", "-W", "--dyn-syms", exe], capture_output=True, text=True, check=True).stdout
    exports = {f[7].split("@")[0] for f in (line.split() for line in out.splitlines())
               if len(f) >= 8 and f[0].endswith(":") and f[6] != "UND" and f[4] in ("GLOBAL", "WEAK")}
    assert exports, out
    assert LAUNCHER_NAMES == overrides | exports


def _debug_plan(tmp_path, prog, name="p"):
    """python -m loader.plan: the plan and pool of the --plan debug mode."""
    import _native
    import loader
    roots = {os.path.dirname(os.path.dirname(m.__file__)) for m in (loader, _native)}
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(sorted(roots)))
    plan, pool = tmp_path / f"{name}.plan", tmp_path / f"{name}.pool"
    subprocess.run([sys.executable, "-P", "-m", "loader.plan", str(prog), "-o", str(plan),
                    "--pool-file", str(pool), "--pool-size", "0x4000000"], check=True, env=e, cwd=tmp_path,
                   capture_output=True)
    return plan, pool


def test_values_are_libc_own(tmp_path):
    """Every precomputed import of xz's and python3's plans is, at this
    process's libc load bias, what dlvsym in libc answers (IFUNC resolvers
    called); launcher names and TLS are never precomputed."""
    h, l_addr = _libc_l_addr()
    for prog in ("/usr/bin/xz", "/usr/bin/python3"):
        plan, pool = _debug_plan(tmp_path, prog)
        p = pf.unpack(plan.read_bytes())
        from loader.elf import ElfFile
        with ElfFile("/lib/x86_64-linux-gnu/libc.so.6") as lc:
            assert p.hdr["libc_build_id"] == lc.build_id
        n = 0
        for (name_off, ver_off, flags, _), value in zip(p.imports, p.import_values):
            name = p.string(name_off)
            if not flags & pf.IMP_LIBC:
                assert value == 0
                continue
            n += 1
            assert name not in LAUNCHER_NAMES and not flags & pf.IMP_TLS
            ver = p.string(ver_off)
            want = libc.dlvsym(h, name.encode(), ver.encode()) if ver else libc.dlsym(h, name.encode())
            got = l_addr + value
            if flags & pf.IMP_IFUNC:
                got = ctypes.CFUNCTYPE(ctypes.c_void_p)(got)()
            assert got == want, (prog, name, ver, hex(got), hex(want or 0))
        assert n > 0.8 * len(p.imports), (prog, n, len(p.imports))
        os.unlink(pool)


def test_check_mode_real_programs(check_env):
    """LDPOOL_CHECK_IMPORTS=1: every import resolved both ways agrees (a
    difference dies with exit 127), outputs as native, and most imports
    came from the plan's values, in dlopen plans too (python3's ssl and
    ctypes extension modules)."""
    need("curl")
    need("llc-14")
    progs = [["xz", "--version"],
             ["/usr/bin/python3", "-c", "import ssl, ctypes, hashlib; "
              "print(ssl.OPENSSL_VERSION, ctypes.CDLL(None).strlen(b'abcd'), hashlib.sha256(b'x').hexdigest())"],
             ["curl", "--version"],
             ["llc-14", "--version"]]
    for argv in progs:
        same(argv, check_env)
        pre, n, ok = _libc_used(argv, check_env)
        assert ok and pre > n // 2, (argv, pre, n)


def test_ifunc_imports(check_env, tmp_path):
    """memcpy/strlen/strchr are IFUNCs in libc: the launcher calls the
    resolver as ld.so does; the pooled program's address of each is the one
    dlsym gives and calls work."""
    (tmp_path / "f.c").write_text(textwrap.dedent("""
        #include <dlfcn.h>
        #include <stdio.h>
        #include <string.h>
        typedef size_t (*len_fn)(const char *);
        int main(int argc, char **argv) {
            char buf[64];
            void *volatile m = (void *)memcpy, *volatile l = (void *)strlen, *volatile c = (void *)strchr;
            memcpy(buf, argv[0], strlen(argv[0]) + 1);
            printf("%d %d %d %zu %s\\n", m == dlsym(RTLD_DEFAULT, "memcpy"), l == dlsym(RTLD_DEFAULT, "strlen"),
                   c == dlsym(RTLD_DEFAULT, "strchr"), ((len_fn)l)("hello"), strchr(buf, 'f') ? "f" : "-");
            return argc;
        }
    """))
    subprocess.run(["gcc", "-O2", "-o", "ifn", "f.c"], check=True, cwd=tmp_path)
    r = same([str(tmp_path / "ifn"), "x"], check_env)
    assert r.stdout == b"1 1 1 5 f\n" and r.returncode == 2
    plan, pool = _debug_plan(tmp_path, tmp_path / "ifn")
    p = pf.unpack(plan.read_bytes())
    flags = {p.string(n): f for n, _, f, _ in p.imports}
    for name in ("memcpy", "strlen", "strchr"):
        assert flags[name] & pf.IMP_LIBC and flags[name] & pf.IMP_IFUNC, name
    assert flags["printf"] & pf.IMP_LIBC and not flags["printf"] & pf.IMP_IFUNC
    assert not flags["dlsym"] & pf.IMP_LIBC          # the launcher's own
    from loader.plan import explain
    text = explain(plan.read_bytes())
    assert re.search(r"import \d+: strlen@GLIBC_2\.2\.5 func libc\+0x[0-9a-f]+ ifunc\n", text), text
    assert "libc build-id " + p.hdr["libc_build_id"].hex() in text
    os.unlink(pool)


def _hello(tmp_path):
    (tmp_path / "h.c").write_text('#include <stdio.h>\n#include <string.h>\n'
                                  'int main(int c, char **v) { printf("hi %zu\\n", strlen(v[0])); return 0; }\n')
    subprocess.run(["gcc", "-O2", "-o", "h", "h.c"], check=True, cwd=tmp_path)
    return tmp_path / "h"


def _debug_run(plan, pool, prog, e):
    return subprocess.run(["ldpool-exec", "--plan", str(plan), "--pool", str(pool), str(prog)],
                          capture_output=True, env=dict(e, LDPOOL_DEBUG="1"), timeout=60)


def test_build_id_mismatch_falls_back(check_env, tmp_path):
    """A plan computed for another libc (its build-id changed) runs with
    dlvsym for every import; the unchanged plan uses its values."""
    prog = _hello(tmp_path)
    plan, pool = _debug_plan(tmp_path, prog)
    good = plan.read_bytes()
    off = pf.HDR.size - pf.BUILD_ID_MAX
    assert good[off:off + struct.unpack_from("<I", good, 188)[0]] == pf.unpack(good).hdr["libc_build_id"]
    r = _debug_run(plan, pool, prog, check_env)
    assert r.returncode == 0 and r.stdout == b"hi %d\n" % len(str(prog)), r.stderr
    m = USED.search(r.stderr)
    assert m and m[3] == b"matches" and int(m[1]) > 0, r.stderr
    bad = bytearray(good)
    bad[off] ^= 0xFF
    plan.write_bytes(bad)
    r = _debug_run(plan, pool, prog, check_env)
    assert r.returncode == 0 and r.stdout == b"hi %d\n" % len(str(prog)), r.stderr
    m = USED.search(r.stderr)
    assert m and m[1] == b"0" and m[3] == b"differs", r.stderr


def test_bad_import_fields_are_refused(env, tmp_path):
    """plan_check: a libc value without a build-id, an IFUNC flag without a
    value, unknown flags: one line, exit 127."""
    prog = _hello(tmp_path)
    plan, pool = _debug_plan(tmp_path, prog)
    good = plan.read_bytes()
    p = pf.unpack(good)
    i = next(k for k, m in enumerate(p.imports) if m[2] & pf.IMP_LIBC)
    j = next(k for k, m in enumerate(p.imports) if not m[2] & pf.IMP_LIBC)
    imp = lambda k: p.hdr["off_import"] + k * pf.IMP.size
    muts = {
        "no_build_id": lambda b: struct.pack_into("<I", b, 188, 0),
        "build_id_len": lambda b: struct.pack_into("<I", b, 188, 33),
        "unknown_flag": lambda b: struct.pack_into("<I", b, imp(i) + 8, p.imports[i][2] | 0x100),
        "ifunc_only": lambda b: struct.pack_into("<I", b, imp(j) + 8, p.imports[j][2] | pf.IMP_IFUNC),
        "value_only": lambda b: struct.pack_into("<Q", b, imp(j) + 16, 0x1234),
    }
    for name, m in muts.items():
        b = bytearray(good)
        m(b)
        plan.write_bytes(b)
        r = subprocess.run(["ldpool-exec", "--plan", str(plan), "--pool", str(pool), str(prog)],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 127 and "bad plan" in r.stderr and r.stderr.count("\n") == 1, (name, r.stderr)


def test_interposing_preload_uses_dlvsym(check_env, tmp_path):
    """A malloc replacement preloaded into the launcher (kept with ld.so)
    binds glibc's names in RTLD_DEFAULT: every import goes through dlvsym,
    and the program's malloc is the replacement's."""
    (tmp_path / "m.c").write_text(textwrap.dedent("""
        #include <stddef.h>
        #include <stdio.h>
        extern void *__libc_malloc(size_t), *__libc_calloc(size_t, size_t), *__libc_realloc(void *, size_t);
        static unsigned long n;
        void *malloc(size_t s) { n++; return __libc_malloc(s); }
        void *calloc(size_t a, size_t b) { n++; return __libc_calloc(a, b); }
        void *realloc(void *p, size_t s) { n++; return __libc_realloc(p, s); }
        __attribute__((destructor)) static void d(void) { fprintf(stderr, "replacement %s\\n", n ? "used" : "unused"); }
    """))
    subprocess.run(["gcc", "-O2", "-fPIC", "-shared", "-o", "libm3.so", "m.c"], check=True, cwd=tmp_path)
    e = dict(check_env, LD_PRELOAD=str(tmp_path / "libm3.so"))
    need("sqlite3")
    argv = ["sqlite3", ":memory:", "select group_concat(value) from generate_series(1, 50);"]
    r = same(argv, e, stderr_too=True)
    assert r.stderr == b"replacement used\n"
    pre, n, ok = _libc_used(argv, e)
    assert pre == 0 and n > 0 and not ok


def test_check_mode_catches_a_wrong_value(check_env, tmp_path):
    """A plan whose libc value for strlen is printf's: check mode dies
    naming the symbol (exit 127, one line)."""
    prog = _hello(tmp_path)
    plan, pool = _debug_plan(tmp_path, prog)
    good = plan.read_bytes()
    p = pf.unpack(good)
    names = [p.string(m[0]) for m in p.imports]
    i, j = names.index("strlen"), names.index("printf")
    b = bytearray(good)
    off = lambda k: p.hdr["off_import"] + k * pf.IMP.size
    struct.pack_into("<IIIIQ", b, off(i), *p.imports[i][:2], p.imports[j][2], 0, p.import_values[j])
    plan.write_bytes(b)
    r = subprocess.run(["ldpool-exec", "--plan", str(plan), "--pool", str(pool), str(prog)],
                       capture_output=True, text=True, env=check_env, timeout=30)
    assert r.returncode == 127 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("ldpool-exec: LDPOOL_CHECK_IMPORTS: strlen@GLIBC_2.2.5: libc value"), r.stderr
