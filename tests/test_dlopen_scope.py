"""RTLD_LOCAL and RTLD_GLOBAL in the broker's dlopen plans: a library
dlopen'ed RTLD_LOCAL stays out of the global scope, so a later dlopen'ed
library binds its references to its own definitions (or to a global
one), as with glibc; RTLD_GLOBAL adds the root's search list.  Run twice:
the second process gets the first plans from the broker's cache, and its
last dlopen makes the broker replay the lease (flags included).  Outputs
compared with a native run."""
import subprocess

from launcher_helpers import env, same  # noqa: F401  (env is a fixture)

PLUGIN = r"""
int who(void) { return %(n)d; }              /* defined by every plugin */
int ask(void) { return who() * 10; }         /* bound through the scope */
int only_%(n)d(void) { return %(n)d; }
"""

MAIN = r"""
#include <dlfcn.h>
#include <stdio.h>
static void load(const char *name, int mode) {
    void *h = dlopen(name, mode);
    if (!h) { printf("%s: %s\n", name, dlerror()); return; }
    printf("%s: ask=%d\n", name, ((int (*)(void))dlsym(h, "ask"))());
}
int main(void) {
    load("libp1.so", RTLD_NOW | RTLD_LOCAL);
    load("libp2.so", RTLD_NOW | RTLD_LOCAL);       /* its own who(): p1 is local */
    load("libp3.so", RTLD_NOW | RTLD_GLOBAL);
    load("libp4.so", RTLD_NOW | RTLD_LOCAL);       /* p3's who(): global first */
    load("libp5.so", RTLD_LAZY);                   /* default: local */
    for (int n = 1; n <= 5; n++) {
        char s[16];
        snprintf(s, sizeof s, "only_%d", n);
        printf("RTLD_DEFAULT %s: %s\n", s, dlsym(RTLD_DEFAULT, s) ? "found" : "not found");
    }
    return 0;
}
"""


def test_rtld_local_and_global_scopes(env, tmp_path):
    for n in range(1, 6):
        (tmp_path / f"p{n}.c").write_text(PLUGIN % {"n": n})
        subprocess.run(["gcc", "-O1", "-fPIC", "-shared", "-o", f"libp{n}.so", f"p{n}.c"], check=True, cwd=tmp_path)
    (tmp_path / "main.c").write_text(MAIN)
    subprocess.run(["gcc", "-O1", "-o", "main", "main.c", "-Wl,-rpath,$ORIGIN"], check=True, cwd=tmp_path)
    for _ in range(2):
        r = same(["./main"], env, cwd=tmp_path)
    out = r.stdout.decode()
    # what glibc does, so that the comparison means something
    assert "libp2.so: ask=20" in out and "libp4.so: ask=30" in out and "libp5.so: ask=30" in out, out
    assert "only_3: found" in out and "only_2: not found" in out, out


NEEDS_WHO = r"""
int who(void);                               /* defined only by libq1 */
int ask(void) { return who() * 100; }
"""

PROMOTE = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(void) {
    void *q1 = dlopen("libq1.so", RTLD_NOW | RTLD_LOCAL);
    printf("q1 %s\n", q1 ? "loaded" : dlerror());
    void *q2 = dlopen("libq2.so", RTLD_NOW);         /* who() is nowhere global */
    printf("q2 before: %s\n", q2 ? "loaded" : "refused");
    void *again = dlopen("libq1.so", RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    printf("promoted: %s\n", again == q1 ? "same handle" : "other");
    q2 = dlopen("libq2.so", RTLD_NOW);
    if (!q2) { printf("q2 after: %s\n", dlerror()); return 1; }
    printf("q2 after: ask=%d\n", ((int (*)(void))dlsym(q2, "ask"))());
    return 0;
}
"""


def test_rtld_noload_global_promotion_reaches_the_broker(env, tmp_path):
    """dlopen(RTLD_NOLOAD|RTLD_GLOBAL) of a local object adds it to the
    global scope: a later dlopen'ed library's undefined reference binds to
    it.  The broker plans that later library, so it must have been told."""
    (tmp_path / "q1.c").write_text(PLUGIN % {"n": 7})
    (tmp_path / "q2.c").write_text(NEEDS_WHO)
    subprocess.run(["gcc", "-O1", "-fPIC", "-shared", "-o", "libq1.so", "q1.c"], check=True, cwd=tmp_path)
    subprocess.run(["gcc", "-O1", "-fPIC", "-shared", "-o", "libq2.so", "q2.c"], check=True, cwd=tmp_path)
    (tmp_path / "main.c").write_text(PROMOTE)
    subprocess.run(["gcc", "-O1", "-o", "main", "main.c", "-Wl,-rpath,$ORIGIN"], check=True, cwd=tmp_path)
    for _ in range(2):
        r = same(["./main"], env, cwd=tmp_path)
    out = r.stdout.decode()
    assert "q2 before: refused" in out and "q2 after: ask=700" in out, out
