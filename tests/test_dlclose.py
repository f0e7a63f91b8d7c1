"""dlclose as glibc's: destructors run when the last handle goes (and the
dependencies' when nothing else needs them), NODELETE objects and objects
still needed stay, the broker drops unloaded objects from the lease (its
counts fall, seen through `ldpool pool --json`), and a later dlopen loads
the library again and runs its constructors again.  The program's output
is compared with a native run."""
import json
import subprocess
import textwrap

from broker_helpers import broker, wait_for  # noqa: F401  (broker is a fixture)
from launcher_helpers import TIMEOUT, env, same  # noqa: F401  (env is a fixture)

LIB = r"""
#include <stdio.h>
%(needs)s
static int calls;
__attribute__((constructor)) static void up(void) { printf("ctor %(name)s\n"); }
__attribute__((destructor)) static void down(void) { printf("dtor %(name)s\n"); }
int %(name)s_call(void) { %(call)s return ++calls; }
"""

MAIN = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
static void stage(const char *name) {
    char line[16];
    printf("STAGE %s\n", name);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) printf("no go-ahead\n");
}
static void *open_(const char *name, int mode) {
    void *h = dlopen(name, mode);
    printf("dlopen %s: %s\n", name, h ? "ok" : dlerror());
    return h;
}
static void call(void *h, const char *sym) {
    int (*f)(void) = (int (*)(void))dlsym(h, sym);
    printf("%s -> %d\n", sym, f ? f() : -1);
}
static void close_(void *h, const char *what) {
    printf("dlclose %s\n", what);
    int r = dlclose(h);
    printf("  = %d\n", r);
}
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *p = open_("libplug.so", RTLD_NOW);
    call(p, "plug_call");
    call(p, "plug_call");
    stage("open");
    /* a second handle: the first dlclose runs no destructor */
    void *p2 = open_("libplug.so", RTLD_LAZY);
    close_(p2, "second handle");
    call(p, "plug_call");
    /* a dependency opened on its own outlives the plugin's dlclose */
    void *d = open_("libdep.so", RTLD_NOW | RTLD_NOLOAD);
    close_(p, "plug");
    call(d, "dep_call");
    close_(d, "dep");
    stage("closed");
    /* loaded again: constructors again, fresh state */
    p = open_("libplug.so", RTLD_NOW);
    call(p, "plug_call");
    stage("reopened");
    /* two plugins share a dependency: it goes with the last of them */
    void *a = open_("liba.so", RTLD_NOW), *b = open_("libb.so", RTLD_NOW);
    call(a, "a_call");
    call(b, "b_call");
    close_(a, "a");
    call(b, "b_call");
    close_(b, "b");
    /* NODELETE: dlclose keeps it, with its state; its destructor runs at exit */
    void *n = open_("libnd.so", RTLD_NOW);
    call(n, "nd_call");
    close_(n, "nodelete");
    n = open_("libnd.so", RTLD_NOW);
    call(n, "nd_call");
    close_(n, "nodelete again");
    /* RTLD_NODELETE on the dlopen does the same */
    void *r = open_("libr.so", RTLD_NOW | RTLD_NODELETE);
    call(r, "r_call");
    close_(r, "RTLD_NODELETE");
    r = open_("libr.so", RTLD_NOW | RTLD_NOLOAD);
    call(r, "r_call");
    printf("main returns\n");
    return 0;
}
"""


def _build(d):
    libs = {
        "dep": ("", ""),
        "plug": ("int dep_call(void);", "dep_call();"),
        "shared": ("", ""),
        "a": ("int shared_call(void);", "shared_call();"),
        "b": ("int shared_call(void);", "shared_call();"),
        "nd": ("", ""),
        "r": ("", ""),
    }
    links = {"plug": ["-L.", "-ldep"], "a": ["-L.", "-lshared"], "b": ["-L.", "-lshared"], "nd": ["-Wl,-z,nodelete"]}
    for name, (needs, call) in libs.items():
        (d / f"{name}.c").write_text(LIB % {"name": name, "needs": needs, "call": call})
        subprocess.run(["gcc", "-O1", "-fPIC", "-shared", "-o", f"lib{name}.so", f"{name}.c",
                        "-Wl,-rpath,$ORIGIN", *links.get(name, [])], check=True, cwd=d)
    (d / "main.c").write_text(MAIN)
    subprocess.run(["gcc", "-O1", "-o", "main", "main.c", "-Wl,-rpath,$ORIGIN"], check=True, cwd=d)


def _refs(broker, d, names):
    out = subprocess.run(["ldpool", "pool", "--socket", broker.socket, "--json"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    st = json.loads(out)
    assert st["totals"].get("consistent", True), st["totals"]
    images = {im["path"]: im for im in st["images"]}
    return {n: images[str(d / f"lib{n}.so")]["refs"] if str(d / f"lib{n}.so") in images else None
            for n in names}


def _staged(prog, env, cwd, stage):
    """Run prog through ldpool-exec; at each "STAGE name" line it prints,
    call stage(name), then let it go on (a newline on its stdin).  Returns
    (stdout lines, stderr) of a run that must exit 0."""
    proc = subprocess.Popen(["ldpool-exec", "--no-fallback", prog], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    out = []
    try:
        for line in proc.stdout:
            out.append(line.decode())
            if line.startswith(b"STAGE "):
                stage(line.split()[1].decode())
                proc.stdin.write(b"\n")
                proc.stdin.flush()
        proc.stdin.close()
        err = proc.stderr.read().decode()
        assert proc.wait(TIMEOUT) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out, err


def test_dlclose_cycle_matches_glibc(env, tmp_path, broker):
    d = tmp_path / "w"
    d.mkdir()
    _build(d)
    nat = subprocess.run(["./main"], input=b"\n" * 8, capture_output=True, env=env, cwd=d, timeout=TIMEOUT)
    assert nat.returncode == 0, nat.stderr
    expect = nat.stdout.decode()
    # the native run is what glibc does: check the test exercises it
    assert expect.count("ctor plug") == 2 and expect.count("dtor plug") == 2
    assert expect.index("dtor plug") < expect.index("dtor dep") and expect.count("ctor nd") == 1

    refs = {}

    def stage(name):
        refs[name] = _refs(broker, d, ["plug", "dep"])
    out, err = _staged("./main", dict(env, LDPOOL_SOCKET=broker.socket), d, stage)
    assert "ldpool-exec" not in err, err
    assert "".join(out) == expect
    assert refs["open"] == {"plug": 1, "dep": 1}
    assert refs["closed"] == {"plug": 0, "dep": 0}
    assert refs["reopened"] == {"plug": 1, "dep": 1}
    # the process is gone: its lease too, once the broker has seen it close
    paths = {str(d / f"lib{n}.so") for n in ("plug", "dep", "a", "b", "shared", "nd", "r")}
    wait_for(lambda: all(im["refs"] == 0 for im in broker.stats()["images"] if im["path"] in paths),
             what="the lease's release")


RESTART = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(void) {
    char line[16];
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *p = dlopen("libplug.so", RTLD_NOW);
    printf("plug_call -> %d\n", ((int (*)(void))dlsym(p, "plug_call"))());
    printf("dlclose = %d\n", dlclose(p));
    printf("STAGE restart\n");
    if (!fgets(line, sizeof line, stdin)) return 2;
    /* the broker restarted: this dlopen reclaims the lease, in which the
     * closed objects are holes, then the closed plugin loads again */
    void *a = dlopen("liba.so", RTLD_NOW);
    printf("a_call -> %d\n", a ? ((int (*)(void))dlsym(a, "a_call"))() : -1);
    p = dlopen("libplug.so", RTLD_NOW);
    printf("plug_call -> %d\n", p ? ((int (*)(void))dlsym(p, "plug_call"))() : -1);
    return 0;
}
"""


def test_dlclose_then_broker_restart(env, tmp_path, broker):
    """A lease with dlclose'd objects survives a broker restart: the
    RECLAIM names them as holes (address 0), the broker resolves the lease
    again without them, and the closed plugin is planned and loaded again
    from the pool (no notice, constructors again)."""
    d = tmp_path / "w"
    d.mkdir()
    _build(d)
    (d / "restart.c").write_text(RESTART)
    subprocess.run(["gcc", "-O1", "-o", "restart", "restart.c", "-Wl,-rpath,$ORIGIN"], check=True, cwd=d)
    nat = subprocess.run(["./restart"], input=b"\n", capture_output=True, env=env, cwd=d, timeout=TIMEOUT)
    assert nat.returncode == 0 and nat.stdout.count(b"ctor plug") == 2, nat
    def stage(_name):
        broker.kill()
        broker.start()
    out, err = _staged("./restart", dict(env, LDPOOL_SOCKET=broker.socket), d, stage)
    assert err == "", err
    assert "".join(out) == nat.stdout.decode()
    assert "reclaimed lease" in broker.log()


CXX_PLUGIN = r"""
#include <iostream>
#include <stdexcept>
#include <string>
#include <cstdlib>
struct G { std::string n; G(const char *s) : n(s) { std::cout << "construct " << n << std::endl; }
           ~G() { std::cout << "destruct " << n << std::endl; } };
static G g("global");
static void bye() { std::cout << "atexit in plugin" << std::endl; }
extern "C" int run(int x) {
    static G local("function-static");
    static bool reg = (std::atexit(bye), true);
    try { if (x > 1) throw std::runtime_error("boom " + std::to_string(x)); }
    catch (const std::exception &e) { std::cout << "caught " << e.what() << std::endl; }
    return x * 2 + reg;
}
"""

CXX_MAIN = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 0; i < 3; i++) {
        void *h = dlopen(argv[1], RTLD_NOW);
        if (!h) { printf("%s\n", dlerror()); return 1; }
        printf("run=%d\n", ((int (*)(int))dlsym(h, "run"))(i + 1));
        fflush(stdout);
        if (i < 2) printf("dlclose=%d\n", dlclose(h));
        fflush(stdout);
    }
    return 0;
}
"""


def test_dlclose_keeps_objects_with_unique_symbols(env, tmp_path):
    """A C++ plugin defining STB_GNU_UNIQUE symbols (inline statics) is made
    NODELETE by glibc once they are bound, and so is libstdc++: dlclose
    keeps them, their destructors run at exit, in glibc's order."""
    (tmp_path / "plug.cc").write_text(CXX_PLUGIN)
    (tmp_path / "main.c").write_text(CXX_MAIN)
    subprocess.run(["g++", "-O1", "-fPIC", "-shared", "-o", "libplug.so", "plug.cc"], check=True, cwd=tmp_path)
    subprocess.run(["gcc", "-O1", "-o", "main", "main.c"], check=True, cwd=tmp_path)
    syms = subprocess.run(["readelf", "-Ws", "--dyn-syms", "libplug.so"], capture_output=True, text=True,
                          cwd=tmp_path).stdout
    assert " UNIQUE " in syms
    r = same(["./main", "./libplug.so"], env, cwd=tmp_path)
    assert r.stdout.decode().count("construct global") == 1, r.stdout
