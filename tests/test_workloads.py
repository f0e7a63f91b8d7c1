"""Real programs doing real work through `ldpool run --no-fallback --`,
compared with native runs: stdout, exit status (signals included) and, where
deterministic, stderr.  Each case is a failure once seen in a sweep of real
workloads, or a workload that exercises what the conformance suite does not
(NSS, gconv, dlopen'ed plugins, fork/spawn, non-PIE executables)."""
import os
import subprocess

import pytest

from launcher_helpers import TIMEOUT, env, need  # noqa: F401  (env is a fixture)

PY = "/usr/bin/python3"


def run(argv, env, pooled, input=None, cwd=None, extra_env=None):
    cmd = (["ldpool", "run", "--no-fallback", "--"] if pooled else []) + list(argv)
    e = dict(env, **(extra_env or {}))
    return subprocess.run(cmd, input=input, capture_output=True, env=e, cwd=cwd, timeout=TIMEOUT)


def same(argv, env, input=None, cwd=None, stderr_too=True, extra_env=None):
    nat = run(argv, env, False, input, cwd, extra_env)
    got = run(argv, env, True, input, cwd, extra_env)
    assert b"ldpool" not in got.stderr or b"ldpool" in nat.stderr, got.stderr.decode(errors="replace")
    assert got.returncode == nat.returncode, (got.returncode, nat.returncode, got.stderr[-2000:])
    assert got.stdout == nat.stdout, (got.stdout[-1000:], nat.stdout[-1000:], got.stderr[-2000:])
    if stderr_too:
        assert got.stderr == nat.stderr, (got.stderr[-2000:], nat.stderr[-2000:])
    return got


def test_non_pie_python_is_pooled(env):
    # /usr/bin/python3 is a non-PIE executable: its undefined malloc/free
    # carry canonical PLT addresses, which replace nothing of glibc's
    if need(PY) and subprocess.run(["readelf", "-h", PY], capture_output=True).stdout.find(b"EXEC") < 0:
        pytest.skip("python3 is a PIE here")
    same([PY, "-c", "import ssl, sqlite3, ctypes, decimal, threading; print(ssl.OPENSSL_VERSION)"], env)


def test_gdb_loads_libthread_db(env):
    # libthread_db binds to gdb's own ps_* functions: ld.so could not bind
    # it to a pooled gdb, which then ran without thread debugging
    import re
    argv = [need("gdb"), "-batch", "-nx", "-ex", "run", "--args", "/usr/bin/true"]
    out = [re.sub(rb"process \d+", b"process N", run(argv, env, pooled).stdout) for pooled in (False, True)]
    assert b"libthread_db enabled" in out[0]
    assert out[1] == out[0]


def test_nss_gconv_and_locale(env):
    # NSS modules, gconv modules and locale archives are loaded by glibc
    # itself, from ld.so's side of the process
    same(["getent", "passwd", "root"], env)
    same(["getent", "hosts", "localhost"], env)
    same(["id", "root"], env)
    same(["iconv", "-f", "latin1", "-t", "utf-8"], env, input=bytes(range(160, 256)))
    same(["iconv", "-f", "utf-8", "-t", "SHIFT_JIS"], env, input="日本語テキスト".encode())
    same(["sort"], env, input="é\ne\nf\nE\n".encode(), extra_env={"LC_ALL": "C.UTF-8"})
    same(["date", "-d", "@0", "+%c %A"], env, extra_env={"LC_ALL": "C.UTF-8", "TZ": "Europe/Paris"})


SPAWN = """
import multiprocessing as mp, hashlib, sys
def f(x):
    return hashlib.sha256(bytes([x])).hexdigest()[:6]
if __name__ == '__main__':
    for method in sys.argv[1:]:
        with mp.get_context(method).Pool(2) as p:
            print(method, p.map(f, range(8)))
"""


def test_python_multiprocessing(env, tmp_path):
    script = tmp_path / "mp.py"
    script.write_text(SPAWN)
    same([PY, str(script), "fork", "spawn", "forkserver"], env)


MISC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
static sigjmp_buf jb;
static __thread int tv = 5;
static void h1(void) { puts("atexit 1"); }
static void h2(void) { puts("atexit 2"); }
__attribute__((constructor)) static void ctor(void) { puts("constructor"); }
__attribute__((destructor)) static void dtor(void) { puts("destructor"); }
static void onsegv(int s) { siglongjmp(jb, s); }
static void *th(void *a) { tv += (long)a; return (void *)(long)tv; }
static int count(struct dl_phdr_info *i, size_t s, void *d) { ++*(int *)d; return 0; }
int main(int argc, char **argv)
{
    atexit(h1);
    atexit(h2);
    signal(SIGSEGV, onsegv);
    int s = sigsetjmp(jb, 1);
    if (!s) *(volatile int *)0 = 1;
    printf("caught %d\n", s);
    pid_t p;
    int st;
    char *av[] = {"sh", "-c", "exit 4", NULL};
    posix_spawn(&p, "/bin/sh", NULL, NULL, av, environ);
    waitpid(p, &st, 0);
    printf("posix_spawn %d\n", WEXITSTATUS(st));
    if (!(p = vfork())) { execl("/bin/sh", "sh", "-c", "exit 5", NULL); _exit(9); }
    waitpid(p, &st, 0);
    printf("vfork %d\n", WEXITSTATUS(st));
    if (!(p = fork())) { printf("child tv %d\n", tv); exit(2); }
    waitpid(p, &st, 0);
    printf("fork %d\n", WEXITSTATUS(st));
    pthread_t t[4];
    void *r;
    long sum = 0;
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, th, (void *)i);
    for (int i = 0; i < 4; i++) pthread_join(t[i], &r), sum += (long)r;
    printf("tls %ld %d\n", sum, tv);
    printf("auxv %lu %s %s\n", getauxval(AT_PAGESZ), (char *)getauxval(AT_EXECFN), program_invocation_short_name);
    int n = 0;
    dl_iterate_phdr(count, &n);
    void *z = dlopen("libz.so.1", RTLD_NOW);
    Dl_info di;
    dladdr(dlsym(z, "zlibVersion"), &di);
    printf("objects %d, %s %s\n", n, di.dli_fname, di.dli_sname);
    fflush(stdout);
    if (argc > 1 && !strcmp(argv[1], "abort")) abort();
    if (argc > 1 && !strcmp(argv[1], "segv")) signal(SIGSEGV, SIG_DFL), raise(SIGSEGV);
    return argc > 1 ? 3 : 0;
}
"""


def test_c_process_features(env, tmp_path):
    src = tmp_path / "misc.c"
    src.write_text(MISC)
    subprocess.run(["cc", "-O1", "-o", tmp_path / "misc", src, "-pthread"], check=True)
    for arg in ([], ["abort"], ["segv"], ["exit"]):
        got = same([str(tmp_path / "misc")] + arg, env)
    assert got.returncode == 3 and b"atexit 2\natexit 1\ndestructor\n" in got.stdout


EXC = r"""
#include <iostream>
#include <regex>
#include <stdexcept>
#include <thread>
#include <vector>
struct S { ~S() { std::cout << "unwound\n"; } };
static int f(int x) { S s; if (x) throw std::out_of_range("oor"); return 1; }
int main()
{
    try { f(1); } catch (const std::exception &e) { std::cout << e.what() << "\n"; }
    try { std::vector<int>().at(3); } catch (std::out_of_range &e) { std::cout << "at\n"; }
    std::vector<std::thread> ts;
    int n[4] = {};
    for (int i = 0; i < 4; i++) ts.emplace_back([&n, i] { try { throw i; } catch (int k) { n[k] = 2 * k; } });
    for (auto &t : ts) t.join();
    std::smatch m;
    std::string s = "mail a@b x";
    std::regex_search(s, m, std::regex("(\\w+)@(\\w+)"));
    std::cout << n[0] + n[1] + n[2] + n[3] << " " << m[2] << std::endl;
    throw 42;    /* terminate: SIGABRT, with libstdc++'s message on stderr */
}
"""


def test_cxx_exceptions_threads_terminate(env, tmp_path):
    src = tmp_path / "exc.cc"
    src.write_text(EXC)
    subprocess.run(["c++", "-O1", "-o", tmp_path / "exc", src, "-pthread"], check=True)
    got = same([str(tmp_path / "exc")], env)
    assert got.returncode < 0 and b"unwound\noor\nat\n12 b\n" == got.stdout


ORIGIN = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
int v(void);
int main(void)
{
    void *h = dlopen("libv.so", RTLD_NOW);
    Dl_info d;
    char origin[4096];
    dladdr((void *)v, &d);
    dlinfo(h, RTLD_DI_ORIGIN, origin);
    printf("%d %s %s\n", v(), d.dli_fname, origin);
    return 0;
}
"""


def test_link_map_names_as_ld_so_built_them(env, tmp_path):
    # "$ORIGIN/../lib/libv.so" stays unnormalised in l_name (dladdr,
    # dlinfo's origin)
    (tmp_path / "lib").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "v.c").write_text("int v(void) { return 41; }\n")
    (tmp_path / "m.c").write_text(ORIGIN)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / "lib/libv.so", tmp_path / "v.c"], check=True)
    subprocess.run(["cc", "-o", tmp_path / "bin/m", tmp_path / "m.c", "-L", tmp_path / "lib", "-lv",
                    "-Wl,-rpath,$ORIGIN/../lib"], check=True)
    got = same([str(tmp_path / "bin/m")], env)
    assert b"/bin/../lib/libv.so" in got.stdout


def test_copy_relocation_of_a_table_spanning_pages(env, tmp_path):
    # a COPY writes the symbol's whole size (systemd's tools copy a 10 KiB
    # table from libsystemd-shared): every page of it must be private
    (tmp_path / "t.c").write_text(
        "const int table[5000] = {[0] = 7, [1024] = 8, [2048] = 9, [4999] = 10};\n"
        "int counters[3000] = {[2999] = 11};\n")
    (tmp_path / "m.c").write_text(
        "#include <stdio.h>\nextern const int table[5000];\nextern int counters[3000];\n"
        "int main(void) { counters[0] += table[4999];\n"
        "  printf(\"%d %d %d %d %d %d\\n\", table[0], table[1024], table[2048], table[4999], counters[0],"
        " counters[2999]); return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / "libt.so", tmp_path / "t.c"], check=True)
    subprocess.run(["cc", "-o", tmp_path / "m", tmp_path / "m.c", "-L", tmp_path, "-lt",
                    f"-Wl,-rpath,{tmp_path}", "-Wl,-z,relro,-z,now"], check=True)
    relocs = subprocess.run(["readelf", "-rW", tmp_path / "m"], capture_output=True, text=True).stdout
    assert "R_X86_64_COPY" in relocs and "table" in relocs
    got = same([str(tmp_path / "m")], env)
    assert got.stdout == b"7 8 9 10 10 11\n"


DEEP = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
int who(void) { return 1; }
int main(int argc, char **argv)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/libdeep.so", argv[1]);
    int (*deep)(void) = dlsym(dlopen(path, RTLD_NOW | RTLD_DEEPBIND), "call_who");
    snprintf(path, sizeof path, "%s/libflat.so", argv[1]);
    int (*flat)(void) = dlsym(dlopen(path, RTLD_NOW), "call_who2");
    printf("%d %d %d\n", deep(), flat(), who());
    return 0;
}
"""


def test_dlopen_deepbind(env, tmp_path):
    # RTLD_DEEPBIND: the plugin (and what it loads) binds to itself before
    # the program's exported definitions
    (tmp_path / "d.c").write_text("int who(void) { return 2; }\nint call_who(void) { return who(); }\n")
    (tmp_path / "f.c").write_text("int who(void) { return 3; }\nint call_who2(void) { return who(); }\n")
    (tmp_path / "m.c").write_text(DEEP)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / "libdeep.so", tmp_path / "d.c"], check=True)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / "libflat.so", tmp_path / "f.c"], check=True)
    subprocess.run(["cc", "-rdynamic", "-o", tmp_path / "m", tmp_path / "m.c"], check=True)
    got = same([str(tmp_path / "m"), str(tmp_path)], env)
    assert got.stdout == b"2 1 1\n"


LINKMAP = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
static void walk(const char *when)
{
    struct link_map *m;
    dlinfo(dlopen(NULL, RTLD_NOW), RTLD_DI_LINKMAP, &m);
    printf("%s:", when);
    for (; m; m = m->l_next) printf(" [%s]", m->l_name);
    printf("\n");
}
int main(void)
{
    walk("start");
    void *z = dlopen("libz.so.1", RTLD_NOW);
    walk("dlopen");
    dlclose(z);
    walk("dlclose");
    return 0;
}
"""


def test_link_map_chain_from_the_program_handle(env, tmp_path):
    # a program walking l_next from its own handle sees every object (the
    # order of the vdso aside: ld.so keeps it right after the program)
    (tmp_path / "lm.c").write_text(LINKMAP)
    subprocess.run(["cc", "-o", tmp_path / "lm", tmp_path / "lm.c", "-lm"], check=True)
    out = [run([str(tmp_path / "lm")], env, pooled).stdout.decode().splitlines() for pooled in (False, True)]
    for nat, got in zip(*out):
        assert sorted(nat.split()) == sorted(got.split()), (nat, got)
    assert "libz.so.1]" in out[1][1] and "libz.so.1]" not in out[1][2]
