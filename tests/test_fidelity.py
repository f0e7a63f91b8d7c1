"""ldpool-exec and `ldpool run` look like ld.so where a user can see it:
the names of libraries found through relative paths (link map, dladdr,
dl_iterate_phdr, dlerror) and ld.so's own error messages and exit statuses
(missing library, undefined symbol at load time and at call time, symbol
versions, a missing LD_PRELOAD).  Small C programs built here; every
expectation is the native run's own output, compared byte for byte."""
import subprocess
import textwrap

import pytest

from launcher_helpers import TIMEOUT, env, same  # noqa: F401  (env is a fixture)


# a library that replaces glibc's allocator (by forwarding to it): ld.so
# must load it before the program, so the launcher leaves it to ld.so
MALLOC_REPLACEMENT = textwrap.dedent("""
        #include <stddef.h>
        void *__libc_malloc(size_t); void __libc_free(void *);
        void *__libc_calloc(size_t, size_t); void *__libc_realloc(void *, size_t);
        void *malloc(size_t n) { return __libc_malloc(n); }
        void free(void *p) { __libc_free(p); }
        void *calloc(size_t a, size_t b) { return __libc_calloc(a, b); }
        void *realloc(void *p, size_t n) { return __libc_realloc(p, n); }
""")


def cc(cwd, *args):
    subprocess.run(["gcc", "-O1", *args], check=True, cwd=cwd)


def pooled(argv, env, cwd, front="exec"):
    cmd = {"exec": ["ldpool-exec", "--no-fallback", "--"], "run": ["ldpool", "run", "--no-fallback", "--"]}[front]
    return subprocess.run(cmd + argv, capture_output=True, env=env, cwd=cwd, timeout=TIMEOUT)


def native(argv, env, cwd):
    return subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=TIMEOUT)


def assert_same_error(argv, env, cwd, fronts=("exec", "run")):
    """Native and pooled runs print the same stdout and stderr and exit alike."""
    nat = native(argv, env, cwd)
    assert nat.returncode != 0, nat
    for front in fronts:
        got = pooled(argv, env, cwd, front)
        assert (got.returncode, got.stdout, got.stderr) == (nat.returncode, nat.stdout, nat.stderr), front
    return nat


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """liby.so (calls missing_fn, which nobody defines), programs linked
    lazily and with -z now against it, a library with version V2 replaced
    by one with V1 only, and a program naming its libraries."""
    d = tmp_path_factory.mktemp("fid")
    (d / "y.c").write_text("int missing_fn(void);\nint bar(void) { return missing_fn(); }\n"
                           "int ok(void) { return 7; }\n")
    (d / "m.c").write_text('#include <stdio.h>\nint bar(void); int ok(void);\n'
                           'int main(void) { printf("%d\\n", ok()); fflush(stdout); return bar(); }\n')
    (d / "g.c").write_text("int gone(void) { return 1; }\n")
    (d / "mg.c").write_text("int gone(void);\nint main(void) { return gone(); }\n")
    (d / "v2.map").write_text("V1 { global: vf; local: *; };\nV2 { global: vf2; } V1;\n")
    (d / "v1.map").write_text("V1 { global: vf; local: *; };\n")
    (d / "v2.c").write_text("int vf(void) { return 1; }\nint vf2(void) { return 2; }\n")
    (d / "v1.c").write_text("int vf(void) { return 1; }\n")
    (d / "mv.c").write_text("int vf2(void);\nint main(void) { return vf2(); }\n")
    (d / "names.c").write_text(textwrap.dedent("""
        #define _GNU_SOURCE
        #include <dlfcn.h>
        #include <link.h>
        #include <stdio.h>
        int ok(void);
        #include <string.h>
        static int cb(struct dl_phdr_info *i, size_t s, void *d) {
            if (strstr(i->dlpi_name, "liby")) printf("phdr [%s]\\n", i->dlpi_name);
            return 0;
        }
        int main(void) {
            Dl_info di;
            dladdr((void *)ok, &di);
            printf("dladdr %s\\n", di.dli_fname);
            void *h = dlopen("liby.so", RTLD_NOW | RTLD_NOLOAD);
            struct link_map *m;
            dlinfo(h, RTLD_DI_LINKMAP, &m);
            printf("l_name [%s]\\n", m->l_name);
            char o[4096];
            dlinfo(h, RTLD_DI_ORIGIN, o);
            printf("origin %s\\n", o);
            void *nope = dlsym(h, "nope");
            printf("sym %p %s\\n", nope, dlerror());
            dl_iterate_phdr(cb, 0);
            return 0;
        }
    """))
    cc(d, "-shared", "-fPIC", "-o", "liby.so", "y.c")
    cc(d, "-o", "lazy", "m.c", "-L.", "-ly", "-Wl,-rpath,.", "-Wl,--allow-shlib-undefined")
    cc(d, "-o", "now", "m.c", "-L.", "-ly", "-Wl,-rpath,.", "-Wl,-z,now", "-Wl,--allow-shlib-undefined")
    cc(d, "-shared", "-fPIC", "-o", "libgone.so", "g.c")
    cc(d, "-o", "needgone", "mg.c", "-L.", "-lgone", "-Wl,-rpath,$ORIGIN")
    (d / "libgone.so").unlink()
    cc(d, "-shared", "-fPIC", "-o", "libv.so", "v2.c", "-Wl,--version-script=v2.map", "-Wl,-soname,libv.so")
    cc(d, "-o", "vprog", "mv.c", "-L.", "-lv", "-Wl,-rpath,$ORIGIN")
    cc(d, "-shared", "-fPIC", "-o", "libv.so", "v1.c", "-Wl,--version-script=v1.map", "-Wl,-soname,libv.so")
    (d / "lib").mkdir()
    (d / "lib" / "liby.so").write_bytes((d / "liby.so").read_bytes())
    cc(d, "-o", "names", "names.c", "-L.", "-ly", "-Wl,--allow-shlib-undefined", "-ldl")
    return d


def test_missing_library_message(env, tree):
    """`PROG: error while loading shared libraries: libgone.so: cannot open
    shared object file: No such file or directory`, exit 127, PROG as
    argv[0] (relative here)."""
    nat = assert_same_error(["./needgone"], env, tree)
    assert nat.returncode == 127 and nat.stderr.startswith(b"./needgone: error while loading shared libraries: libgone")


def test_undefined_symbol_at_load_and_call(env, tree):
    """`PROG: symbol lookup error: ./liby.so: undefined symbol: missing_fn`
    (the library named as it was found through RPATH "."), exit 127: at the
    call for a lazily bound library, at load time with LD_BIND_NOW=1, and
    for a -z now program whose library is lazy."""
    for prog, e in (("./lazy", env), ("./lazy", dict(env, LD_BIND_NOW="1")), ("./now", env)):
        nat = assert_same_error([prog], e, tree, fronts=("exec",))
        assert b"symbol lookup error: ./liby.so: undefined symbol: missing_fn" in nat.stderr


def test_version_not_found(env, tree):
    """`PROG: LIB: version `V2' not found (required by PROG)`, exit 1."""
    nat = assert_same_error(["./vprog"], env, tree)
    assert b"version `V2' not found (required by ./vprog)" in nat.stderr and nat.returncode == 1


def test_missing_preload_is_a_warning(env, tree):
    """ld.so's `ERROR: ld.so: object ... cannot be preloaded ...: ignored.`
    and the program runs (and then fails lazily as natively)."""
    e = dict(env, LD_PRELOAD="nothere.so")
    nat = assert_same_error(["./lazy"], e, tree, fronts=("exec",))
    assert b"nothere.so' from LD_PRELOAD cannot be preloaded" in nat.stderr


def test_relative_names(env, tree):
    """A library found through LD_LIBRARY_PATH=lib is `lib/liby.so` for
    dladdr, the link map, dlerror and dl_iterate_phdr; its origin is
    absolute, as natively."""
    e = dict(env, LD_LIBRARY_PATH="lib")
    r = same(["./names"], e, cwd=tree)
    out = r.stdout.decode()
    assert "dladdr lib/liby.so\n" in out and "l_name [lib/liby.so]" in out and "phdr [lib/liby.so]" in out
    assert f"origin {tree}/lib\n" in out and "lib/liby.so: undefined symbol: nope" in out


def test_fallback_notice_names_the_replaced_function(env, tmp_path):
    """gprofng's case, minimised: a DT_NEEDED malloc replacement (left to
    ld.so, which binds it before the program exists) calls a function the
    program defines.  The program runs under ld.so as natively, and the
    notice says which glibc functions the library replaces (not glibc's
    fault)."""
    (tmp_path / "al.c").write_text(MALLOC_REPLACEMENT + textwrap.dedent("""
        int prog_hook(void);
        int call_hook(void) { return prog_hook(); }
    """))
    (tmp_path / "m.c").write_text('#include <stdio.h>\nint call_hook(void);\n'
                                  'int prog_hook(void) { return 41; }\n'
                                  'int main(void) { printf("%d\\n", call_hook() + 1); return 0; }\n')
    cc(tmp_path, "-shared", "-fPIC", "-o", "libal.so", "al.c")
    cc(tmp_path, "-o", "hooked", "m.c", "-L.", "-lal", "-Wl,-rpath,$ORIGIN", "-rdynamic")
    nat = native(["./hooked"], env, tmp_path)
    got = subprocess.run(["ldpool-exec", "./hooked"], capture_output=True, env=env, cwd=tmp_path, timeout=TIMEOUT)
    assert (got.returncode, got.stdout) == (nat.returncode, nat.stdout) == (0, b"42\n")
    assert b"hooked defines prog_hook, which " in got.stderr and b"libal.so calls" in got.stderr, got.stderr
    assert b"libal.so replaces glibc's malloc, free, calloc, realloc" in got.stderr, got.stderr


def test_dl_iterate_phdr_native_order(env, tmp_path):
    """dl_iterate_phdr reports the program, the vDSO, the start's objects
    in ld.so's load order (libz, libm, libc: glibc's family where the
    program needed it, among pooled libz), ld.so, then a dlopen'ed library:
    names, count and order as natively."""
    (tmp_path / "ord.c").write_text(textwrap.dedent("""
        #define _GNU_SOURCE
        #include <dlfcn.h>
        #include <link.h>
        #include <math.h>
        #include <stdio.h>
        #include <zlib.h>
        static int cb(struct dl_phdr_info *i, size_t s, void *d) {
            printf("[%s] tls %d\\n", i->dlpi_name, i->dlpi_tls_modid != 0);
            return 0;
        }
        int main(int argc, char **argv) {
            printf("%s %f\\n", zlibVersion(), sqrt(argc + 1.0));
            dl_iterate_phdr(cb, 0);
            void *h = dlopen("libbz2.so.1.0", RTLD_NOW);
            puts("-- after dlopen");
            dl_iterate_phdr(cb, 0);
            return !h;
        }
    """))
    cc(tmp_path, "-o", "ord", "ord.c", "-lz", "-lm", "-ldl")
    r = same([str(tmp_path / "ord")], env)
    assert r.stdout.count(b"\n[") >= 11 and b"[linux-vdso.so.1]" in r.stdout.split(b"\n")[2]
    # LD_PRELOADs: a pooled one and a malloc replacement kept with ld.so,
    # both right after the vDSO, in LD_PRELOAD's order
    (tmp_path / "pre.c").write_text("int pre_only(void) { return 1; }\n")
    (tmp_path / "mal.c").write_text(MALLOC_REPLACEMENT)
    cc(tmp_path, "-shared", "-fPIC", "-o", "libpre.so", "pre.c")
    cc(tmp_path, "-shared", "-fPIC", "-o", "libmal.so", "mal.c")
    e = dict(env, LD_PRELOAD=f"{tmp_path}/libpre.so {tmp_path}/libmal.so")
    r = same([str(tmp_path / "ord")], e)
    assert r.stdout.split(b"\n")[3].startswith(f"[{tmp_path}/libpre.so]".encode())


def test_dlopen_errors_as_dlerror(env, tree, tmp_path):
    """dlerror after a failed dlopen: a missing library, a missing
    dependency of the library, and RTLD_NOW with an undefined symbol
    (`./liby.so: undefined symbol: missing_fn`, no "symbol lookup error")."""
    (tree / "pl.c").write_text("int gone(void);\nint plug(void) { return gone(); }\n")
    cc(tree, "-shared", "-fPIC", "-o", "libdep.so", "g.c")
    cc(tree, "-shared", "-fPIC", "-o", "libplug.so", "pl.c", "-L.", "-ldep", "-Wl,-rpath,$ORIGIN")
    (tree / "libdep.so").unlink()
    (tree / "dl.c").write_text(textwrap.dedent("""
        #include <dlfcn.h>
        #include <stdio.h>
        int main(void) {
            const char *names[] = {"libnothere.so", "./libplug.so", "./liby.so"};
            for (int i = 0; i < 3; i++) {
                void *h = dlopen(names[i], RTLD_NOW);
                printf("%s: %s\\n", names[i], h ? "loaded" : dlerror());
            }
            return 0;
        }
    """))
    cc(tree, "-o", "dl", "dl.c", "-ldl")
    r = same(["./dl"], env, cwd=tree)
    assert b"./liby.so: ./liby.so: undefined symbol: missing_fn\n" in r.stdout


def test_undefined_symbol_of_the_program(env, tmp_path):
    """A -z now program whose own import is missing is named by argv[0]:
    `./mmnow: symbol lookup error: ./mmnow: undefined symbol: missing_main`."""
    (tmp_path / "mm.c").write_text('#include <stdio.h>\nint missing_main(void);\n'
                                   'int main(void) { puts("hi"); return missing_main(); }\n')
    (tmp_path / "with.c").write_text("int missing_main(void) { return 0; }\n")
    (tmp_path / "without.c").write_text("int other(void) { return 0; }\n")
    cc(tmp_path, "-shared", "-fPIC", "-o", "libmm.so", "with.c")
    cc(tmp_path, "-o", "mmnow", "mm.c", "-L.", "-lmm", "-Wl,-z,now", "-Wl,-rpath,$ORIGIN")
    cc(tmp_path, "-shared", "-fPIC", "-o", "libmm.so", "without.c")
    nat = assert_same_error(["./mmnow"], env, tmp_path)
    assert nat.stderr == b"./mmnow: symbol lookup error: ./mmnow: undefined symbol: missing_main\n"
