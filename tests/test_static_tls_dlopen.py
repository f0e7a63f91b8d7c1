"""dlopen of libraries that need static TLS (initial-exec TPOFF64,
DF_STATIC_TLS; TLSDESC, which glibc also serves statically while its
surplus lasts): the launcher carves their blocks from what the program's
plan left of its static TLS reserve and initialises them in every thread,
including threads that existed before the dlopen (glibc's
_dl_init_static_tls).  A dlopen/dlclose loop reuses the block.  Outputs
compared with a native run."""
import subprocess

from launcher_helpers import env, same  # noqa: F401  (env is a fixture)

LIB = r"""
#include <stdio.h>
#include <string.h>
/* exported, with names of their own: the broker binds as if every
 * dlopen were RTLD_GLOBAL (docs/protocol.md) */
__thread int %(name)s_counter __attribute__((tls_model("%(model)s"))) = 5;
__thread char %(name)s_text[24] __attribute__((tls_model("%(model)s"))) = "%(name)s-init";
__thread double %(name)s_pad[3] __attribute__((tls_model("%(model)s")));
__attribute__((constructor)) static void up(void) { %(name)s_counter += 100; }
int %(name)s_bump(const char *who) {
    %(name)s_counter++;
    %(name)s_pad[0] += 1.5;
    if (who) snprintf(%(name)s_text, sizeof %(name)s_text, "%%s", who);
    return %(name)s_counter;
}
const char *%(name)s_label(void) { return %(name)s_text; }
"""

MAIN = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
static __thread int mine = 42;          /* the program's own local-exec block */
static pthread_barrier_t go, done;
typedef int (*bump_t)(const char *);
typedef const char *(*label_t)(void);
static bump_t bump[2];
static label_t label[2];
static void report(const char *who) {
    for (int k = 0; k < 2; k++)
        printf("%s: lib%d label=%s bump=%d\n", who, k, label[k](), bump[k](NULL));
    printf("%s: mine=%d\n", who, mine);
}
static void *old_thread(void *a) {
    mine = 7;
    pthread_barrier_wait(&go);          /* the libraries are loaded now */
    report("old thread");
    bump[0]("old");
    report("old thread again");
    pthread_barrier_wait(&done);
    return 0;
}
static void *new_thread(void *a) { report("new thread"); return 0; }
int main(int argc, char **argv) {
    pthread_t t, u;
    pthread_barrier_init(&go, 0, 2);
    pthread_barrier_init(&done, 0, 2);
    pthread_create(&t, 0, old_thread, 0);
    void *h[2];
    for (int k = 0; k < 2; k++) {
        h[k] = dlopen(argv[1 + k], RTLD_NOW);
        if (!h[k]) { printf("dlopen: %s\n", dlerror()); return 1; }
        char n[32];
        snprintf(n, sizeof n, "%s_bump", k ? "desc" : "ie");
        bump[k] = (bump_t)dlsym(h[k], n);
        snprintf(n, sizeof n, "%s_label", k ? "desc" : "ie");
        label[k] = (label_t)dlsym(h[k], n);
    }
    bump[0]("main");
    report("main");
    pthread_barrier_wait(&go);
    pthread_barrier_wait(&done);
    pthread_join(t, 0);
    pthread_create(&u, 0, new_thread, 0);
    pthread_join(u, 0);
    /* unloaded and loaded again: fresh blocks, constructors again, and
     * the static TLS space is not used up by a loop */
    for (int i = 0; i < 50; i++) {
        dlclose(h[0]);
        h[0] = dlopen(argv[1], RTLD_NOW);
        if (!h[0]) { printf("reopen %d: %s\n", i, dlerror()); return 1; }
    }
    bump[0] = (bump_t)dlsym(h[0], "ie_bump");
    label[0] = (label_t)dlsym(h[0], "ie_label");
    report("after reopen");
    return 0;
}
"""


def test_dlopen_of_static_tls_libraries(env, tmp_path):
    for name, model, extra in (("ie", "initial-exec", []), ("desc", "global-dynamic", ["-mtls-dialect=gnu2"])):
        (tmp_path / f"{name}.c").write_text(LIB % {"name": name, "model": model})
        subprocess.run(["gcc", "-O1", "-fPIC", "-shared", *extra, "-o", f"lib{name}.so", f"{name}.c"],
                       check=True, cwd=tmp_path)
    (tmp_path / "main.c").write_text(MAIN)
    subprocess.run(["gcc", "-O1", "-o", "main", "main.c", "-lpthread"], check=True, cwd=tmp_path)
    # what makes them need static TLS
    dyn = subprocess.run(["readelf", "-dr", "libie.so"], capture_output=True, text=True, cwd=tmp_path).stdout
    assert "STATIC_TLS" in dyn and "R_X86_64_TPOFF64" in dyn, dyn
    rel = subprocess.run(["readelf", "-r", "libdesc.so"], capture_output=True, text=True, cwd=tmp_path).stdout
    assert "R_X86_64_TLSDESC" in rel, rel
    r = same([str(tmp_path / "main"), str(tmp_path / "libie.so"), str(tmp_path / "libdesc.so")], env)
    out = r.stdout.decode()
    # the old thread saw initialised blocks (the init image, not zeros)
    assert "old thread: lib0 label=ie-init bump=6" in out and "old thread: lib1 label=desc-init bump=6" in out, out
    assert "old thread: mine=7" in out and "main: mine=42" in out, out
    assert "after reopen: lib0 label=ie-init bump=106" in out, out
