"""backtrace_symbols and backtrace_symbols_fd name pooled functions as
glibc names ld.so's: FILE(SYM+0xOFF) [0xADDR], FILE(+0xOFF) for an address
no exported symbol covers, and the fd form without the space.  Compared
with a native run, addresses masked (the offsets must agree)."""
import re
import subprocess
import textwrap

from launcher_helpers import env, run  # noqa: F401  (env is a fixture)

LIB = r"""
#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
void show(void) {
    void *b[32];
    int n = backtrace(b, 32);
    char **s = backtrace_symbols(b, n);
    /* frames in the library and the program only: what lies below main
     * (libc's start code, the launcher) differs by design */
    for (int i = 0; i < 7 && i < n; i++) printf("%s\n", s[i]);
    fflush(stdout);
    backtrace_symbols_fd(b, n < 7 ? n : 7, 1);
    free(s);
    char **none = backtrace_symbols(b, 0);
    printf("empty: %s\n", none ? "ok" : "null");
    free(none);
}
static void __attribute__((noinline)) hidden(int d) { if (d) hidden(d - 1); else show(); __asm__ volatile(""); }
void deep(int d) { hidden(d); __asm__ volatile(""); }
"""

MAIN = r"""
void deep(int);
void __attribute__((noinline)) exported_caller(void) { deep(1); __asm__ volatile(""); }
static void __attribute__((noinline)) local_caller(void) { exported_caller(); __asm__ volatile(""); }
int main(void) { local_caller(); return 0; }
"""


def _mask(out):
    return re.sub(rb"\[0x[0-9a-f]+\]", b"[ADDR]", out)


def test_backtrace_symbols_names_pooled_frames(env, tmp_path):
    (tmp_path / "lib.c").write_text(LIB)
    (tmp_path / "main.c").write_text(MAIN)
    cc = lambda *a: subprocess.run(["gcc", "-O1", *a], check=True, cwd=tmp_path)
    cc("-fPIC", "-shared", "-o", "libbt.so", "lib.c")
    # -rdynamic: exported_caller is named, local_caller is FILE(+0xOFF)
    cc("-rdynamic", "-o", "main", "main.c", "-L.", "-lbt", "-Wl,-rpath,$ORIGIN")
    nat = run(["./main"], env, False, cwd=tmp_path)
    got = run(["./main"], env, True, cwd=tmp_path)
    assert nat.returncode == 0 and got.returncode == 0, got.stderr
    assert _mask(got.stdout) == _mask(nat.stdout), (got.stdout, nat.stdout)
    lines = _mask(nat.stdout).decode().splitlines()
    lib = str(tmp_path / "libbt.so")
    # the test means something only if the native run named these frames
    assert lines[0].startswith(f"{lib}(show+0x") and lines[0].endswith(") [ADDR]"), lines
    assert any(l.startswith(f"{lib}(+0x") for l in lines[:7]), lines
    assert any(l.startswith("./main(exported_caller+0x") for l in lines[:7]), lines
    assert any(l.startswith("./main(+0x") for l in lines[:7]), lines
    assert lines[7].startswith(f"{lib}(show+0x") and lines[7].endswith(")[ADDR]"), lines
    assert lines[-1] == "empty: ok"
