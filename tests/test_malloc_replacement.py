"""A malloc replacement the program needs through DT_NEEDED: ld.so preloads
it into the launcher (glibc must be bound to it before glibc runs) and the
program still runs from the pool, with the same output, status and
environment as natively.  Sanitizer runtimes stay with plain ld.so."""
import os
import shutil
import subprocess

import pytest

from launcher_helpers import TIMEOUT, env  # noqa: F401  (env is a fixture)

ARENA = r"""
/* every allocation function over a static arena (free keeps nothing) */
#include <errno.h>
#include <stddef.h>
#include <string.h>
static char arena[32 << 20] __attribute__((aligned(4096)));
static size_t top;
static unsigned long calls;
static void *grab(size_t align, size_t n)
{
    if (align < 16) align = 16;
    size_t start = (__atomic_load_n(&top, __ATOMIC_RELAXED) + 16 + align - 1) & ~(align - 1);
    if (start + n > sizeof arena) return NULL;
    top = start + n;
    ((size_t *)(arena + start))[-1] = n;
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    return arena + start;
}
int arena_owns(void *p) { return (char *)p >= arena && (char *)p < arena + sizeof arena; }
unsigned long arena_calls(void) { return calls; }
void *malloc(size_t n) { return grab(16, n); }
void free(void *p) { (void)p; }
void *calloc(size_t a, size_t b) { return grab(16, a * b); }
size_t malloc_usable_size(void *p) { return p && arena_owns(p) ? ((size_t *)p)[-1] : 0; }
void *realloc(void *p, size_t n)
{
    void *q = grab(16, n);
    size_t o = malloc_usable_size(p);
    if (p && q) memcpy(q, p, o < n ? o : n);
    return q;
}
void *memalign(size_t a, size_t n) { return grab(a, n); }
void *aligned_alloc(size_t a, size_t n) { return grab(a, n); }
void *valloc(size_t n) { return grab(4096, n); }
void *pvalloc(size_t n) { return grab(4096, (n + 4095) & ~4095UL); }
int posix_memalign(void **r, size_t a, size_t n)
{
    void *p = grab(a, n);
    if (!p) return ENOMEM;
    *r = p;
    return 0;
}
"""

PROG = r"""
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int arena_owns(void *p);
unsigned long arena_calls(void);
static void *thread(void *a) { return (void *)(long)arena_owns(strdup("in a thread")); }
int main(void)
{
    char *a = malloc(100), *b = calloc(10, 10), *c = realloc(a, 1000), *g, *line = NULL;
    void *d = NULL, *r;
    posix_memalign(&d, 256, 10);
    void *e = aligned_alloc(64, 64), *f = memalign(4096, 1);
    size_t n = 0;
    FILE *fp = fopen("/proc/self/cmdline", "r");       /* glibc's own allocations */
    getline(&line, &n, fp);
    fclose(fp);
    asprintf(&g, "%d", 42);
    pthread_t t;
    pthread_create(&t, NULL, thread, NULL);
    pthread_join(t, &r);
    printf("ours: %d %d %d %d %d %d %d %d %d %d\n", arena_owns(a), arena_owns(b), arena_owns(c),
           arena_owns(d), arena_owns(e), arena_owns(f), arena_owns(strdup("x")), arena_owns(line),
           arena_owns(g), (int)(long)r);
    printf("aligned: %d %d, usable: %d, calls: %d\n", ((unsigned long)d & 255) == 0,
           ((unsigned long)f & 4095) == 0, malloc_usable_size(c) == 1000, arena_calls() > 8);
    const char *pre = getenv("LD_PRELOAD");
    printf("LD_PRELOAD=%s LDPOOL_HOSTED=%s\n", pre ? pre : "(unset)", getenv("LDPOOL_HOSTED") ? "set" : "unset");
    fp = fopen("/proc/self/maps", "r");
    char m[4096];
    int arena_text = 0, launcher = 0;
    while (fgets(m, sizeof m, fp)) {
        arena_text += strstr(m, "libarena.so") && strstr(m, " r-xp ");
        launcher += strstr(m, "ldpool-exec") != NULL;
    }
    printf("libarena text mapped %d time(s)\n", arena_text);
    fprintf(stderr, "launcher mapped: %d\n", launcher > 0);
    free(a);
    return 7;
}
"""

ASAN = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) { char *p = malloc(10); p[argc] = 1; puts("fine"); free(p); return 3; }
"""


def cc(*args):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (bootstrap.sh installs build-essential)")
    subprocess.run([cc, *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("mallocrepl")
    (d / "arena.c").write_text(ARENA)
    (d / "prog.c").write_text(PROG)
    cc("-O1", "-shared", "-fPIC", "-o", d / "libarena.so", d / "arena.c")
    cc("-O1", "-o", d / "prog", d / "prog.c", "-L", d, "-larena", f"-Wl,-rpath,{d}", "-pthread")
    return d


def run(prefix, prog, env, extra=None):
    e = dict(env, **(extra or {}))
    return subprocess.run(prefix + [str(prog)], capture_output=True, env=e, timeout=TIMEOUT)


PREFIXES = [["ldpool", "run", "--no-fallback", "--"], ["ldpool-exec", "--no-fallback", "--"]]


@pytest.mark.parametrize("prefix", PREFIXES, ids=["run", "exec"])
@pytest.mark.parametrize("preload", [None, "libz.so.1"], ids=["plain", "user-preload"])
def test_dt_needed_malloc_replacement_runs_pooled(built, env, prefix, preload):
    extra = {"LD_PRELOAD": preload} if preload else None
    nat = run([], built / "prog", env, extra)
    assert nat.returncode == 7 and b"ours: 1 1 1 1 1 1 1 1 1 1" in nat.stdout, nat
    for _ in range(2):                 # the second start takes the fast path
        got = run(prefix, built / "prog", env, extra)
        assert (got.returncode, got.stdout) == (nat.returncode, nat.stdout), got.stderr
        # pooled (the launcher is in the process), not left to ld.so
        assert got.stderr == b"launcher mapped: 1\n" and nat.stderr == b"launcher mapped: 0\n"


def test_sanitizer_runtime_stays_with_ld_so(env, tmp_path):
    (tmp_path / "a.c").write_text(ASAN)
    try:
        cc("-fsanitize=address", "-o", tmp_path / "asan", tmp_path / "a.c")
    except subprocess.CalledProcessError:
        pytest.skip("no libasan for this compiler")
    nat = run([], tmp_path / "asan", env)
    assert (nat.returncode, nat.stdout) == (3, b"fine\n")
    for prefix in (["ldpool", "run", "--"], ["ldpool-exec", "--"]):
        got = run(prefix, tmp_path / "asan", env)
        assert (got.returncode, got.stdout) == (3, b"fine\n"), got.stderr
        assert got.stderr.count(b"\n") == 1 and b"sanitizer runtime" in got.stderr, got.stderr
    for prefix in (["ldpool", "run", "--no-fallback", "--"], ["ldpool-exec", "--no-fallback", "--"]):
        got = run(prefix, tmp_path / "asan", env)
        assert got.returncode == 127 and b"sanitizer runtime" in got.stderr and got.stdout == b""
