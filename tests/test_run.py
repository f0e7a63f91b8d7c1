"""`ldpool run` as a drop-in prefix: real programs, a real broker started on
demand on a private socket, compared with native runs; clear one-line
errors for bad programs; plain ld.so (with a notice) for what cannot be
pooled."""
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from broker_helpers import stop_and_unlink


@pytest.fixture(scope="module")
def env():
    if shutil.which("ldpool") is None or shutil.which("ldpool-exec") is None:
        pytest.fail("ldpool / ldpool-exec are not on PATH: install the package or run tools/dev-build")
    d = tempfile.mkdtemp(prefix="ldpool-run-test-")
    os.chmod(d, 0o700)
    e = dict(os.environ, LDPOOL_SOCKET=os.path.join(d, "broker.sock"), LC_ALL="C")
    yield e
    stop_and_unlink(e["LDPOOL_SOCKET"])
    shutil.rmtree(d, ignore_errors=True)


def ldrun(*argv, env, **kw):
    kw.setdefault("capture_output", True)
    return subprocess.run(["ldpool", "run", *argv], env=env, timeout=120, **kw)


def one_line_error(r, pattern):
    err = r.stderr.decode()
    assert r.returncode != 0 and r.returncode <= 128, (r.returncode, err)
    assert "Traceback" not in err
    assert err.count("\n") == 1 and pattern in err, err


def test_same_output_and_status_as_native(env):
    for argv in (["xz", "--version"], ["xz", "--bogus"], ["sh", "-c", "exit 42"]):
        nat = subprocess.run(argv, capture_output=True, env=env)
        got = ldrun("--", *argv, env=env)
        assert (got.returncode, got.stdout) == (nat.returncode, nat.stdout), got.stderr
        assert b"note:" not in got.stderr


def test_stdin_signals_and_pid_pass_through(env, tmp_path):
    data = os.urandom(200_000)
    packed = ldrun("--", "xz", "-c", "-1", env=env, input=data)
    assert packed.returncode == 0
    assert subprocess.run(["xz", "-dc"], input=packed.stdout, capture_output=True).stdout == data
    got = ldrun("--", "sh", "-c", "kill -TERM $$", env=env)
    assert got.returncode == -signal.SIGTERM
    # no child process: the program has the pid we started
    p = subprocess.Popen(["ldpool", "run", "--", "sh", "-c", "echo $$"], env=env, stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=60)
    assert int(out) == p.pid
    # argv[0] as typed; options after PROG belong to PROG
    got = ldrun("sh", "-c", 'echo "$0" "$@"', "zero", "--socket", "x", env=env)
    assert got.stdout == b"zero --socket x\n"


def test_explain(env):
    got = ldrun("--explain", "--", "xz", "--version", env=env)
    assert got.returncode == 0
    out = got.stdout.decode()
    assert out.startswith("plan: 2 objects") and "liblzma.so.5" in out and "glibc: libc.so.6" in out
    assert "total pages: shared=" in out


def test_socket_option(env, tmp_path):
    sock = tmp_path / "other.sock"
    got = ldrun("--socket", str(sock), "--", "xz", "--version", env=env)
    assert got.returncode == 0 and got.stdout.startswith(b"xz (XZ Utils)")
    assert sock.exists()
    stop_and_unlink(str(sock))


def test_bad_programs(env, tmp_path):
    one_line_error(ldrun("no_such_program_xyz", env=env), "no_such_program_xyz: command not found")
    assert ldrun("no_such_program_xyz", env=env).returncode == 127
    one_line_error(ldrun(str(tmp_path / "nope"), env=env), "nope: no such file")
    text = tmp_path / "not_an_elf"
    text.write_text("echo hi\n")
    text.chmod(0o755)
    one_line_error(ldrun(str(text), env=env), "not an ELF file")
    data = open("/usr/bin/xz", "rb").read()
    trunc = tmp_path / "truncated_prog"
    trunc.write_bytes(data[:100])
    trunc.chmod(0o755)
    one_line_error(ldrun(str(trunc), env=env), "truncated ELF file")
    wrong = tmp_path / "wrong_machine"
    wrong.write_bytes(data[:18] + (3).to_bytes(2, "little") + data[20:])
    wrong.chmod(0o755)
    one_line_error(ldrun(str(wrong), env=env), "wrong ELF machine")
    noexec = tmp_path / "noexec"
    noexec.write_bytes(data)
    noexec.chmod(0o644)
    one_line_error(ldrun(str(noexec), env=env), "permission denied")
    one_line_error(ldrun(env=env), "no program given")


def test_fallbacks(env, tmp_path):
    script = tmp_path / "s.sh"
    script.write_text('#!/bin/sh\necho "script $*"\nexit 3\n')
    script.chmod(0o755)
    # a script is no fallback: the launcher runs its interpreter pooled
    for opt in ((), ("--no-fallback",)):
        got = ldrun(*opt, str(script), "a", env=env)
        assert (got.returncode, got.stdout, got.stderr) == (3, b"script a\n", b"")

    (tmp_path / "st.c").write_text("int main(void) { return 7; }\n")
    subprocess.run(["cc", "-static", "-o", tmp_path / "static", tmp_path / "st.c"], check=True)
    got = ldrun(str(tmp_path / "static"), env=env)
    assert got.returncode == 7 and b"statically linked" in got.stderr

    (tmp_path / "m.c").write_text(
        "#include <stddef.h>\nextern void *__libc_malloc(size_t);\n"
        "void *malloc(size_t n) { return __libc_malloc(n); }\n")
    (tmp_path / "p.c").write_text("#include <stdlib.h>\nint main(void) { free(malloc(10)); return 5; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / "libmymalloc.so", tmp_path / "m.c"], check=True)
    subprocess.run(["cc", "-o", tmp_path / "usesmalloc", tmp_path / "p.c", "-L", tmp_path, "-lmymalloc",
                    "-Wl,--no-as-needed", "-Wl,-rpath," + str(tmp_path)], check=True)
    # a library's malloc is preloaded into the launcher: no fallback
    # (tests/test_malloc_replacement.py); the program's own is
    got = ldrun("--no-fallback", str(tmp_path / "usesmalloc"), env=env)
    assert (got.returncode, got.stderr) == (5, b"")
    subprocess.run(["cc", "-o", tmp_path / "ownmalloc", tmp_path / "p.c", tmp_path / "m.c"], check=True)
    got = ldrun(str(tmp_path / "ownmalloc"), env=env)
    assert got.returncode == 5 and b"replaces glibc's malloc" in got.stderr
    one_line_error(ldrun("--no-fallback", str(tmp_path / "ownmalloc"), env=env), "replaces glibc's malloc")
