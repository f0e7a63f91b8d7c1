"""ldpool-exec runs real programs: byte-identical stdout and the same exit
status as a native run of the same command.  Everything is real: the
system's programs and libraries, a real broker on a Unix socket (started on
demand by the launcher itself), the real POSIX shm pool."""
import os
import shutil
import subprocess
import textwrap

import pytest

SOCKDIR = f"/tmp/ldpool-test-{os.getuid()}"
TIMEOUT = 300          # first runs pre-relocate big libraries (libLLVM) in the broker


@pytest.fixture(scope="module")
def env():
    os.makedirs(SOCKDIR, mode=0o700, exist_ok=True)
    e = dict(os.environ)
    e["LDPOOL_SOCKET"] = f"{SOCKDIR}/broker.sock"
    e["LC_ALL"] = "C"
    e.pop("LDPOOL_DEBUG", None)
    if shutil.which("ldpool-exec", path=e.get("PATH")) is None:
        pytest.fail("ldpool-exec is not on PATH: install the package or run tools/dev-build")
    return e


def run(argv, env, pooled, input=None, cwd=None):
    cmd = (["ldpool-exec", "--no-fallback", "--"] if pooled else []) + list(argv)
    return subprocess.run(cmd, input=input, capture_output=True, env=env, cwd=cwd, timeout=TIMEOUT)


def same(argv, env, input=None, cwd=None, stderr_too=False):
    """Run natively and pooled; assert identical stdout and exit status.
    Returns the pooled result."""
    nat = run(argv, env, False, input, cwd)
    got = run(argv, env, True, input, cwd)
    if nat.returncode != 127:
        assert b"ldpool-exec:" not in got.stderr, got.stderr.decode(errors="replace")
    assert got.returncode == nat.returncode, (got.returncode, nat.returncode, got.stderr[-2000:])
    assert got.stdout == nat.stdout, (got.stdout[-1000:], nat.stdout[-1000:], got.stderr[-2000:])
    if stderr_too:
        assert got.stderr == nat.stderr
    return got


def need(prog):
    p = shutil.which(prog)
    if p is None:
        pytest.fail(f"{prog} is not installed (bootstrap.sh installs it)")
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    blob = b"".join(b"line %d: the quick brown fox %x\n" % (i, i * 2654435761 % 2**32) for i in range(20000))
    (d / "blob.txt").write_bytes(blob)
    return d


def test_hello_c(env, tmp_path):
    src = tmp_path / "hello.c"
    src.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include <string.h>
        #include <errno.h>
        #include <unistd.h>
        __thread int counter = 40;
        extern char *program_invocation_short_name;
        int main(int argc, char **argv) {
            counter += argc;
            errno = 0;
            printf("hello %s %d argc=%d name=%s\\n", argc > 1 ? argv[1] : "-", counter, argc,
                   program_invocation_short_name);
            return 3;
        }
    """))
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "hello"), str(src)], check=True)
    r = same([str(tmp_path / "hello"), "world"], env)
    assert r.stdout == b"hello world 42 argc=2 name=hello\n"


def test_exit_by_signal(env, tmp_path):
    src = tmp_path / "abrt.c"
    src.write_text("#include <stdlib.h>\nint main(void){ abort(); }\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "abrt"), str(src)], check=True)
    r = same([str(tmp_path / "abrt")], env)
    assert r.returncode == -6


def test_xz_round_trip(env, data):
    need("xz")
    blob = (data / "blob.txt").read_bytes()
    c = same(["xz", "-c", "-6", str(data / "blob.txt")], env)
    d = same(["xz", "-dc"], env, input=c.stdout)
    assert d.stdout == blob
    same(["xz", "--version"], env)
    same(["xz", "-t"], env, input=b"not xz data")     # an error exit status, same as native


def test_zstd_round_trip(env, data):
    need("zstd")
    c = same(["zstd", "-q", "-c", "-5", str(data / "blob.txt")], env)
    d = same(["zstd", "-q", "-dc"], env, input=c.stdout)
    assert d.stdout == (data / "blob.txt").read_bytes()


def test_sqlite3_queries(env, tmp_path):
    need("sqlite3")
    db = tmp_path / "t.db"
    sql = ("create table t(a integer, b text); "
           "with recursive n(i) as (select 1 union all select i+1 from n where i < 500) "
           "insert into t select i, printf('row%04d', i) from n; "
           "select count(*), sum(a), min(b), max(b) from t; "
           "select group_concat(b, ',') from (select b from t where a % 97 = 0 order by a);")
    subprocess.run(["sqlite3", str(db), "select 1;"], check=True, capture_output=True)
    r = same(["sqlite3", ":memory:", sql], env)
    assert r.stdout.startswith(b"500|125250|row0001|row0500\n")


def test_python3_extension_modules(env):
    py = "/usr/bin/python3"
    code = textwrap.dedent("""
        import ssl, sqlite3, ctypes, decimal, threading, hashlib, json
        print(ssl.OPENSSL_VERSION_NUMBER > 0, ssl.create_default_context().protocol)
        c = sqlite3.connect(':memory:'); c.execute('create table t(x)')
        c.executemany('insert into t values (?)', [(i,) for i in range(100)])
        print(c.execute('select sum(x) from t').fetchone())
        libc = ctypes.CDLL(None); print(libc.strlen(b'hello ldpool'))
        decimal.getcontext().prec = 30; print(decimal.Decimal(1) / decimal.Decimal(7))
        out = []
        ts = [threading.Thread(target=lambda i=i: out.append(hashlib.sha256(str(i).encode()).hexdigest()[:8]))
              for i in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print(sorted(out)); print(json.dumps({'a': [1, 2]}))
    """)
    same([py, "-c", code], env)


def test_perl_xs_modules(env):
    need("perl")
    same(["perl", "-MList::Util=sum,max,first", "-MPOSIX=floor,strftime", "-MData::Dumper", "-e",
          'print sum(1..100), " ", max(3,9,2), " ", floor(7.9), " ", strftime("%Y", gmtime(0)), "\\n";'
          '$Data::Dumper::Sortkeys=1; print Dumper({a=>1,b=>[2,3]});'], env)


def test_git(env, tmp_path):
    need("git")
    same(["git", "--version"], env)
    same(["git", "hash-object", "--stdin"], env, input=b"ldpool\n" * 1000)
    subprocess.run(["git", "init", "-q", str(tmp_path / "r")], check=True)
    (tmp_path / "r" / "f.txt").write_text("hello\n")
    same(["git", "-C", str(tmp_path / "r"), "status", "--porcelain"], env)


def test_curl_file_url(env, data):
    need("curl")
    same(["curl", "-s", f"file://{data}/blob.txt"], env)
    same(["curl", "-s", f"file://{data}/does-not-exist"], env)


def test_openssl_dgst(env, data):
    need("openssl")
    same(["openssl", "dgst", "-sha256", str(data / "blob.txt")], env)
    same(["openssl", "dgst", "-sha3-512", str(data / "blob.txt")], env)


def test_cmake_script(env, tmp_path):
    cmake = "/usr/bin/cmake" if os.path.exists("/usr/bin/cmake") else need("cmake")
    s = tmp_path / "s.cmake"
    s.write_text('string(SHA256 h "ldpool")\nmath(EXPR x "6*7")\nlist(APPEND l c b a)\nlist(SORT l)\n'
                 'execute_process(COMMAND echo hi OUTPUT_VARIABLE o)\n'
                 'file(WRITE ${CMAKE_CURRENT_LIST_DIR}/o.txt "${h} ${x} ${l} ${o}")\n')
    same([cmake, "-P", str(s)], env)
    assert (tmp_path / "o.txt").read_text().split()[1:3] == ["42", "a;b;c"]


def test_gdb_batch(env):
    need("gdb")
    same(["gdb", "-nx", "-batch", "-ex", "print 6*7", "-ex", "print sizeof(long)"], env)


def test_qemu_img(env, tmp_path):
    need("qemu-img")
    img = tmp_path / "x.qcow2"
    r = same(["qemu-img", "create", "-f", "qcow2", str(img), "4M"], env)
    assert img.exists()
    same(["qemu-img", "check", str(img)], env)


def test_llc_and_filecheck(env, tmp_path):
    need("llc-14")
    fc = shutil.which("FileCheck-14") or "/usr/lib/llvm-14/bin/FileCheck"
    ll = tmp_path / "t.ll"
    ll.write_text("define i32 @add(i32 %a, i32 %b) {\n  %c = add i32 %a, %b\n  ret i32 %c\n}\n")
    r = same(["llc-14", "-O2", "-o", "-", str(ll)], env)
    chk = tmp_path / "chk.txt"
    chk.write_text("CHECK: add:\nCHECK: ret\n")
    same([fc, str(chk)], env, input=r.stdout)
    chk.write_text("CHECK: nothing-like-this\n")
    same([fc, str(chk)], env, input=r.stdout)      # a failing check: same non-zero status


def test_vim_ex_mode(env, tmp_path):
    need("vim")
    f = tmp_path / "v.txt"
    f.write_text("alpha\nbeta\ngamma\n")
    same(["vim", "-Nu", "NONE", "-i", "NONE", "-es", "+%s/a/A/g", "+%print", "+q!", str(f)], env)


def test_jq(env):
    need("jq")
    same(["jq", "-c", "{x: (.a + 1), k: (keys)}"], env, input=b'{"a": 41, "b": [1,2]}')


def test_dlopen_tls_and_threads(env, tmp_path):
    """A library with TLS dlopen'ed while another thread already runs: both
    threads see fresh copies of its TLS init image; dlclose and reopen reset
    its state; dlsym/dladdr/dlerror know it."""
    (tmp_path / "plug.c").write_text(textwrap.dedent("""
        __thread int tv = 7; __thread char tbuf[64] = "init";
        static int state = 100;
        int *tv_addr(void) { return &tv; }
        int bump(int x) { tv += x; state += x; return tv * 1000 + state; }
    """))
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #define _GNU_SOURCE
        #include <dlfcn.h>
        #include <pthread.h>
        #include <stdio.h>
        #include <string.h>
        static pthread_barrier_t b1, b2;
        static int (*bump)(int);
        static void *thr(void *a) {
            pthread_barrier_wait(&b1);            /* wait for the dlopen */
            printf("thread: %d\\n", bump(1));
            printf("thread: %d\\n", bump(1));
            pthread_barrier_wait(&b2);
            return 0;
        }
        int main(int argc, char **argv) {
            pthread_t t;
            pthread_barrier_init(&b1, 0, 2); pthread_barrier_init(&b2, 0, 2);
            pthread_create(&t, 0, thr, 0);
            for (int round = 0; round < 2; round++) {
                void *h = dlopen(argv[1], RTLD_NOW);
                if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
                bump = (int (*)(int))dlsym(h, "bump");
                printf("main: %d\\n", bump(10));
                if (round == 0) { pthread_barrier_wait(&b1); pthread_barrier_wait(&b2); pthread_join(t, 0); }
                Dl_info di;
                printf("dladdr: %d %s\\n", dladdr((void *)bump, &di), di.dli_sname);
                void *miss = dlsym(h, "no_such");
                const char *e = dlerror();
                printf("missing: %p %s\\n", miss, e && strstr(e, "no_such") ? "named" : "?");
                printf("dlclose: %d\\n", dlclose(h));
            }
            return 0;
        }
    """))
    subprocess.run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(tmp_path / "libplug.so"), str(tmp_path / "plug.c")],
                   check=True)
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), "-ldl", "-lpthread"],
                   check=True)
    r = same([str(tmp_path / "main"), str(tmp_path / "libplug.so")], env)
    assert r.stdout.count(b"main: 17110") == 2 and b"thread: 8111" in r.stdout


def test_ld_preload(env, tmp_path):
    """LD_PRELOAD follows glibc: the preload comes first in the program's
    scope, its constructor runs once, the variable stays set for children,
    a missing preload is a warning, not an error."""
    (tmp_path / "pre.c").write_text('#include <stdio.h>\n'
                                    '__attribute__((constructor)) static void c(void) { puts("preload ctor"); }\n'
                                    'int who(void) { return 99; }\n')
    (tmp_path / "lib.c").write_text("int who(void) { return 1; }\n")
    (tmp_path / "main.c").write_text('#include <stdio.h>\n#include <stdlib.h>\nint who(void);\n'
                                     'int main(void) { printf("who=%d LD_PRELOAD %s\\n", who(), '
                                     'getenv("LD_PRELOAD") ? "set" : "unset"); return 0; }\n')
    cc = lambda *a: subprocess.run(["gcc", "-O2", *a], check=True, cwd=tmp_path)
    cc("-fPIC", "-shared", "-o", "libpre.so", "pre.c")
    cc("-fPIC", "-shared", "-o", "libwho.so", "lib.c")
    cc("-o", "main", "main.c", "-L.", "-lwho", "-Wl,-rpath,$ORIGIN")
    e = dict(env, LD_PRELOAD=str(tmp_path / "libpre.so"))
    r = same([str(tmp_path / "main")], e)
    assert r.stdout == b"preload ctor\nwho=99 LD_PRELOAD set\n"
    e = dict(env, LD_PRELOAD=str(tmp_path / "missing.so"))
    r = same([str(tmp_path / "main")], e, stderr_too=True)
    assert b"cannot be preloaded" in r.stderr


def test_gdb_sees_pooled_objects(env, tmp_path):
    """gdb's backtrace of a program run through ldpool-exec names the
    program's and the pooled libraries' functions."""
    need("gdb")
    (tmp_path / "bt.c").write_text(textwrap.dedent("""
        #include <signal.h>
        #include <stdio.h>
        #include <zlib.h>
        static int cb(void) { raise(SIGTRAP); return 0; }
        int work(int x) { return x + cb(); }
        int main(void) { printf("%s\\n", zlibVersion()); return work(1); }
    """))
    subprocess.run(["gcc", "-g", "-O0", "-o", "bt", "bt.c", "-lz"], check=True, cwd=tmp_path)
    r = subprocess.run(["gdb", "-nx", "-batch", "-ex", "run", "-ex", "bt", "-ex", "info sharedlibrary",
                        "--args", "ldpool-exec", "--no-fallback", str(tmp_path / "bt")],
                       capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert "in work (x=1) at" in r.stdout and "in main () at" in r.stdout, r.stdout
    assert "libz.so.1" in r.stdout, r.stdout


def _hello_plan(tmp_path, env):
    (tmp_path / "h.c").write_text('#include <stdio.h>\nint main(void){ puts("hi"); return 0; }\n')
    subprocess.run(["gcc", "-O2", "-o", "h", "h.c"], check=True, cwd=tmp_path)
    import sys
    subprocess.run([sys.executable, "-m", "loader.plan", str(tmp_path / "h"), "-o", str(tmp_path / "h.plan"),
                    "--pool-file", str(tmp_path / "h.pool"), "--pool-size", "0x1000000"],
                   check=True, env=env, cwd=tmp_path)
    return (tmp_path / "h.plan").read_bytes()


def test_bad_plans_are_one_line_errors(env, tmp_path):
    """--plan debug mode: a plan damaged in any field the launcher relies on
    is refused with one line and exit 127, never a crash."""
    import struct
    from loader import planformat as pf
    good = _hello_plan(tmp_path, env)
    hdr = dict(zip("version hdr_size nobj nseg nfix nimport ninit main_obj nglibc first_index".split(),
                   struct.unpack_from("<10I", good, 8)))
    offs = dict(zip("off_obj off_seg off_fix off_import off_init off_glibc off_str str_size".split(),
                    struct.unpack_from("<8Q", good, 48)))
    o, s, f = offs["off_obj"], offs["off_seg"], offs["off_fix"]
    assert hdr["nfix"] > 0 and hdr["nseg"] > 0
    muts = {
        "truncated": lambda b: b[:100],
        "magic": lambda b: b"XXXXXXXX" + b[8:],
        "version": lambda b: _put(b, 8, "I", 2),
        "nobj": lambda b: _put(b, 16, "I", 0xFFFFFFFF),
        "nfix": lambda b: _put(b, 24, "I", 0x7FFFFFFF),
        "main_obj": lambda b: _put(b, 36, "I", 77),
        "off_str": lambda b: _put(b, 96, "Q", 1 << 40),
        "str_size": lambda b: _put(b, 104, "Q", 1 << 40),
        "static_tls": lambda b: _put(b, 112, "Q", 1 << 30),
        "pool_size": lambda b: _put(b, 128, "Q", 1 << 40),
        "obj_path": lambda b: _put(b, o + 52, "I", 0xFFFFFF),
        "obj_range": lambda b: _put(b, o + 16, "Q", struct.unpack_from("<Q", b, o + 8)[0]),
        "obj_segs": lambda b: _put(b, o + 60, "I", 0xFFFFFF),
        "seg_pool_off": lambda b: _put(b, s + 16, "Q", 1 << 40),
        "seg_kind": lambda b: _put(b, s + 28, "I", 9),
        "seg_addr": lambda b: _put(b, s, "Q", struct.unpack_from("<Q", b, s)[0] + 1),
        "fix_addr": lambda b: _put(b, f, "Q", 0x1000),
        "entry": lambda b: _put(b, o + 72, "Q", 0x1000),
        "fix_type": lambda b: _put(b, f + 8, "I", 99),
        "fix_sym": lambda b: _put(_put(b, f + 8, "I", pf.FIX_SYM64), f + 12, "I", 123456),
    }
    for name, m in muts.items():
        bad = tmp_path / f"{name}.plan"
        bad.write_bytes(m(good))
        r = subprocess.run(["ldpool-exec", "--plan", str(bad), "--pool", str(tmp_path / "h.pool"),
                            str(tmp_path / "h")], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 127, (name, r.returncode, r.stderr)
        assert r.stderr.startswith("ldpool-exec: ") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert "bad plan" in r.stderr or "static TLS" in r.stderr, (name, r.stderr)
    # the undamaged plan runs
    r = subprocess.run(["ldpool-exec", "--plan", str(tmp_path / "h.plan"), "--pool", str(tmp_path / "h.pool"),
                        str(tmp_path / "h")], capture_output=True, env=env, timeout=30)
    assert (r.returncode, r.stdout) == (0, b"hi\n")


def _put(b, off, fmt, v):
    import struct
    b = bytearray(b)
    struct.pack_into("<" + fmt, b, off, v)
    return bytes(b)


def test_preloaded_malloc_replacement(env, tmp_path):
    """A preloaded malloc replacement stays with ld.so (glibc is bound to
    it already) and the pooled program's allocations go through it too."""
    (tmp_path / "m.c").write_text(textwrap.dedent("""
        #include <stddef.h>
        #include <stdio.h>
        extern void *__libc_malloc(size_t), *__libc_calloc(size_t, size_t), *__libc_realloc(void *, size_t);
        extern void __libc_free(void *);
        static unsigned long n;
        void *malloc(size_t s) { n++; return __libc_malloc(s); }
        void free(void *p) { __libc_free(p); }
        void *calloc(size_t a, size_t b) { n++; return __libc_calloc(a, b); }
        void *realloc(void *p, size_t s) { n++; return __libc_realloc(p, s); }
        __attribute__((destructor)) static void d(void) { fprintf(stderr, "replacement %s\\n", n ? "used" : "unused"); }
    """))
    subprocess.run(["gcc", "-O2", "-fPIC", "-shared", "-o", "libm2.so", "m.c"], check=True, cwd=tmp_path)
    need("sqlite3")
    e = dict(env, LD_PRELOAD=str(tmp_path / "libm2.so"))
    r = same(["sqlite3", ":memory:", "select group_concat(value) from generate_series(1, 50);"], e, stderr_too=True)
    assert r.stderr == b"replacement used\n"


def test_lazy_missing_function(env, tmp_path):
    """A lazily bound function nobody defines fails only when called, with
    ld.so's "symbol lookup error" and status 127; LD_BIND_NOW fails at once."""
    (tmp_path / "lib.c").write_text("void missing_fn(void);\nint call_it(int x) { if (x) missing_fn(); return 5; }\n")
    (tmp_path / "main.c").write_text('#include <stdio.h>\nint call_it(int);\n'
                                     'int main(int c, char **v) { printf("%d\\n", call_it(0)); fflush(stdout);'
                                     ' return call_it(c > 1); }\n')
    cc = lambda *a: subprocess.run(["gcc", "-O2", *a], check=True, cwd=tmp_path)
    cc("-fPIC", "-shared", "-o", "libl.so", "lib.c", "-Wl,-z,lazy")
    cc("-o", "exe", "main.c", "-L.", "-ll", "-Wl,-rpath,$ORIGIN", "-Wl,-z,lazy", "-Wl,--allow-shlib-undefined")
    assert same([str(tmp_path / "exe")], env).returncode == 5
    r = same([str(tmp_path / "exe"), "call"], env)
    assert r.returncode == 127 and b"undefined symbol: missing_fn" in r.stderr
    r = same([str(tmp_path / "exe")], dict(env, LD_BIND_NOW="1"))
    assert r.returncode == 127 and b"undefined symbol: missing_fn" in r.stderr
