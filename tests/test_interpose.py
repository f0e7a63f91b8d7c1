"""Program definitions that take the place of glibc's own (loader/interpose.py):
argp's --version, error()'s program-name hook and obstack's failure
handler are the program's, as natively; a program that replaces a function
glibc calls (its own malloc) runs under ld.so, with the notice."""
import subprocess
import textwrap

from launcher_helpers import env, run, same  # noqa: F401  (env is a fixture)

from loader import interpose, resolve
from loader.scope import Scope

ARGP = r"""
#include <argp.h>
#include <error.h>
#include <stdio.h>
#include <stdlib.h>
const char *argp_program_version = "demo 4.2 (the program's own)";
const char *argp_program_bug_address = "<bugs@example.org>";
error_t argp_err_exit_status = 42;
int error_one_per_line = 1;
static void my_progname(void) { fprintf(stderr, "[hook] "); }
static struct argp_option opts[] = {{"loud", 'l', 0, 0, "be loud"}, {0}};
static error_t parse(int key, char *arg, struct argp_state *st) {
    (void)arg; (void)st;
    if (key == 'l') puts("loud");
    return key == 'l' ? 0 : ARGP_ERR_UNKNOWN;
}
static struct argp argp = {opts, parse, 0, "A demo."};
int main(int argc, char **argv) {
    error_print_progname = my_progname;
    argp_parse(&argp, argc, argv, 0, 0, 0);
    error(0, 0, "message through error()");
    error_at_line(0, 0, "f.c", 3, "once");
    error_at_line(0, 0, "f.c", 3, "once");
    printf("count %u\n", error_message_count);
    return 0;
}
"""

MALLOC = r"""
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static char heap[1 << 22]; static size_t used;
void *malloc(size_t n) { void *p = heap + used; used += (n + 15) & ~15ul; return p; }
void free(void *p) { (void)p; }
void *calloc(size_t a, size_t b) { void *p = malloc(a * b); memset(p, 0, a * b); return p; }
void *realloc(void *o, size_t n) { void *p = malloc(n); if (o) memcpy(p, o, n); return p; }
int main(void) { printf("own malloc %d\n", used > 0 || malloc(1) != NULL); return 0; }
"""


def build(tmp_path, name, src):
    (tmp_path / f"{name}.c").write_text(textwrap.dedent(src))
    subprocess.run(["cc", "-O1", "-o", str(tmp_path / name), str(tmp_path / f"{name}.c")], check=True)
    return str(tmp_path / name)


def test_plan_finds_the_programs_definitions(tmp_path):
    prog = build(tmp_path, "argpdemo", ARGP)
    found = {x.name for x in interpose.interpositions(Scope.from_resolution(resolve.resolve_program(prog)))}
    assert {"argp_program_version", "argp_program_bug_address", "argp_err_exit_status",
            "error_one_per_line"} <= found
    # COPY relocations (error_print_progname, stdout) are the COPY path's
    assert not {"stdout", "error_print_progname"} & found


def test_argp_and_error_hooks_are_the_programs(env, tmp_path):
    prog = build(tmp_path, "argpdemo", ARGP)
    for args in (["--version"], ["--help"], ["--loud"], ["--bogus"], []):
        same([prog] + args, env, stderr_too=True)
    assert b"the program's own" in run([prog, "--version"], env, True).stdout
    assert run([prog, "--bogus"], env, True).returncode == 42


def test_own_malloc_stays_with_ldso(env, tmp_path):
    prog = build(tmp_path, "ownmalloc", MALLOC)
    with_fallback = subprocess.run(["ldpool-exec", prog], capture_output=True, env=env, timeout=120)
    assert with_fallback.returncode == 0 and with_fallback.stdout == b"own malloc 1\n"
    assert b"cannot be pooled" in with_fallback.stderr and with_fallback.stderr.count(b"\n") == 1
    strict = run([prog], env, True)
    assert strict.returncode == 127 and b"cannot be pooled" in strict.stderr
