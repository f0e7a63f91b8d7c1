"""ldpool-exec features checked with small C programs built at test time:
dynamic TLS and threads across dlopen, LD_PRELOAD (pooled, or left to ld.so
for malloc replacements), lazy binding failures, gdb visibility, and
damaged plans in the --plan debug mode.  Each result is compared with a
native run where there is one."""
import subprocess
import textwrap

from launcher_helpers import TIMEOUT, env, need, same  # noqa: F401  (env is a fixture)


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
    # stdout: glibc data, so the plan has a fixup (calls go through the stubs)
    (tmp_path / "h.c").write_text('#include <stdio.h>\nint main(void){ fputs("hi\\n", stdout); return 0; }\n')
    subprocess.run(["gcc", "-O2", "-o", "h", "h.c"], check=True, cwd=tmp_path)
    import sys
    subprocess.run([sys.executable, "-P", "-m", "loader.plan", str(tmp_path / "h"), "-o", str(tmp_path / "h.plan"),
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
    nslot, slot = struct.unpack_from("<I", good, 184)[0], struct.unpack_from("<Q", good, 192)[0]
    assert nslot > 0
    assert hdr["nfix"] > 0 and hdr["nseg"] > 0
    muts = {
        "truncated": lambda b: b[:100],
        "magic": lambda b: b"XXXXXXXX" + b[8:],
        "version": lambda b: _put(b, 8, "I", pf.VERSION + 1),
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
        "seg_file_writable": lambda b: _put(_put(b, s + 28, "I", pf.SEG_FILE), s + 24, "I", 3),
        "seg_file_past_eof": lambda b: _put(_put(b, s + 28, "I", pf.SEG_FILE), s + 16, "Q", 1 << 40),
        "seg_addr": lambda b: _put(b, s, "Q", struct.unpack_from("<Q", b, s)[0] + 1),
        "fix_addr": lambda b: _put(b, f, "Q", 0x1000),
        "entry": lambda b: _put(b, o + 72, "Q", 0x1000),
        "fix_type": lambda b: _put(b, f + 8, "I", 99),
        "fix_sym": lambda b: _put(_put(b, f + 8, "I", pf.FIX_SYM64), f + 12, "I", 123456),
        # the epoch's stub region and slot table (plan.h, loader/stubs.py)
        "stubs_addr": lambda b: _put(b, 144, "Q", struct.unpack_from("<Q", b, 144)[0] + 8),
        "stubs_pool_off": lambda b: _put(b, 160, "Q", 1 << 40),
        "slots_on_object": lambda b: _put(b, 168, "Q", struct.unpack_from("<Q", b, o + 8)[0]),
        "slot_index": lambda b: _put(b, slot, "I", 1 << 20),
        "slot_import": lambda b: _put(b, slot + 4, "I", 123456),
        "slot_object": lambda b: _put(b, slot + 8, "I", 123456),
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


def test_glibc_backtrace_through_pooled_frames(env, tmp_path):
    """glibc's backtrace() and pthread_exit() unwind with the libgcc_s that
    glibc dlopens itself: it must find pooled frames too."""
    (tmp_path / "lib.c").write_text("int deep(int n, int (*cb)(void)) { if (n == 0) return cb(); "
                                    "return deep(n - 1, cb) + 1; }\n")
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #include <execinfo.h>
        #include <pthread.h>
        #include <stdio.h>
        int deep(int n, int (*cb)(void));
        static int cb(void) { void *b[64]; int n = backtrace(b, 64); printf("frames>=10: %s\\n", n >= 10 ? "yes" : "no"); return 0; }
        static int cb_exit(void) { pthread_exit((void *)42); return 0; }
        static void *thr(void *a) { deep(5, cb_exit); return 0; }
        int main(void) {
            deep(8, cb);
            pthread_t t; void *r;
            pthread_create(&t, 0, thr, 0); pthread_join(t, &r);
            printf("thread exit %ld\\n", (long)r);
            return 0;
        }
    """))
    cc = lambda *a: subprocess.run(["gcc", "-O0", "-fasynchronous-unwind-tables", *a], check=True, cwd=tmp_path)
    cc("-fPIC", "-shared", "-o", "libbt.so", "lib.c")
    cc("-o", "main", "main.c", "-L.", "-lbt", "-Wl,-rpath,$ORIGIN", "-lpthread")
    r = same([str(tmp_path / "main")], env)
    assert r.stdout == b"frames>=10: yes\nthread exit 42\n"


def test_proc_self_exe_is_the_program(env):
    """Programs that find themselves through /proc/self/exe (perl's $^X)
    get their own path, and can run themselves again."""
    need("perl")
    r = same(["perl", "-e", 'print "$^X\\n"; system($^X, "-e", "print qq(child ok\\n)"); print readlink("/proc/self/exe"), "\\n"'],
             env)
    assert r.stdout == b"/usr/bin/perl\nchild ok\n/usr/bin/perl\n"
    same(["/usr/bin/python3", "-c", "import os; print(os.readlink('/proc/self/exe'), os.path.realpath('/proc/self/exe'))"],
         env)


def test_no_broker(env, tmp_path):
    """No broker and none can be started: the program runs under ld.so with
    a one-line notice, or, with --no-fallback, one line and status 127."""
    (tmp_path / "h.c").write_text('#include <stdio.h>\nint main(void){ puts("hi"); return 4; }\n')
    subprocess.run(["gcc", "-o", "h", "h.c"], check=True, cwd=tmp_path)
    e = dict(env, LDPOOL_SOCKET="/proc/no-such-dir/broker.sock")
    r = subprocess.run(["ldpool-exec", str(tmp_path / "h")], capture_output=True, text=True, env=e, timeout=60)
    assert (r.returncode, r.stdout) == (4, "hi\n")
    assert r.stderr.startswith("ldpool-exec: note: running") and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run(["ldpool-exec", "--no-fallback", str(tmp_path / "h")], capture_output=True, text=True,
                       env=e, timeout=60)
    assert (r.returncode, r.stdout) == (127, "")
    assert "broker" in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_program_executes_proc_self_exe(env, tmp_path):
    """execv("/proc/self/exe", argv) from a pooled program runs the program
    again (from the pool), not the launcher with the program's arguments."""
    (tmp_path / "s.c").write_text(textwrap.dedent("""
        #include <stdio.h>
        #include <string.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            if (argc > 1 && !strcmp(argv[1], "child")) { printf("child of %s\\n", argv[0]); return 7; }
            printf("parent\\n"); fflush(stdout);
            char *v[] = {argv[0], "child", NULL};
            execv("/proc/self/exe", v);
            return 1;
        }
    """))
    subprocess.run(["gcc", "-o", "selfx", "s.c"], check=True, cwd=tmp_path)
    r = same(["./selfx"], env, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (7, b"parent\nchild of ./selfx\n")

