"""`ldpool ldd` against the real ld.so over the system's programs and
libraries (issue 2's acceptance test), with LD_LIBRARY_PATH / LD_PRELOAD
variants, on the gcc-built trees, and its behaviour on bad input."""
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_ldpool
from engine_support import binding_requester, glibc_bindings
from ldtrees import BASE_ENV, RTLD, build_tree, strip_addresses

SYSTEM_DIRS = ["/usr/bin", "/usr/sbin", "/usr/lib/llvm-14/bin", "/lib/x86_64-linux-gnu"]
CHUNK = 400  # files per ldpool process


def _is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def system_files():
    """Every ELF file (symlinks included: they change $ORIGIN) in the
    acceptance directories."""
    out = []
    for d in SYSTEM_DIRS:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if os.path.isfile(p) and _is_elf(p):
                out.append(p)
    return out


def ldso_oracle(path, env):
    """What ldd shows (ld.so in trace mode, LD_TRACE_LOADED_OBJECTS=1):
    ('ok', lines) -- then `ld.so --list` shows the same --, ('missing',
    lines) when libraries are not found (--list stops at the first), or
    ('refused', why) when ld.so cannot list the file at all."""
    e = dict(BASE_ENV, **env)
    r = subprocess.run([RTLD, path], capture_output=True, text=True, timeout=60,
                       env=dict(e, LD_TRACE_LOADED_OBJECTS="1"))
    lines = strip_addresses(r.stdout.splitlines())
    if r.returncode != 0:
        return "refused", (r.returncode, r.stderr.strip()[-200:])
    # symbol version problems: "FILE: LIB: version `V' not found (required by X)"
    lines += [ln for ln in r.stderr.splitlines() if ln.startswith(path + ": ") and "version" in ln]
    if any(ln.endswith(" => not found") for ln in lines):
        return "missing", lines
    r2 = subprocess.run([RTLD, "--list", path], capture_output=True, text=True, env=e, timeout=60)
    assert r2.returncode == 0 and strip_addresses(r2.stdout.splitlines()) == [
        ln for ln in lines if ln.startswith("\t")], (path, r2.stderr)
    return "ok", lines


def ldpool_ldd(files, env, cwd=None):
    """{file: listing lines} and {file: error} from `ldpool ldd` runs of CHUNK files."""
    listings, errors = {}, {}
    for i in range(0, len(files), CHUNK):
        chunk = files[i:i + CHUNK]
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "GLIBC_TUNABLES"))}
        r = run_ldpool("ldd", *chunk, env=dict(clean, **env), cwd=cwd, timeout=600)
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        cur = None
        for ln in r.stdout.splitlines():
            if not ln.startswith("\t") and ln.endswith(":") and ln[:-1] in chunk:
                cur = ln[:-1]
                listings[cur] = []
            else:
                listings[cur].append(ln)
        versions = {}
        for ln in r.stderr.splitlines():
            if ln.startswith("ldpool: "):
                for f in chunk:
                    if ln.startswith(f"ldpool: {f}: "):
                        errors[f] = ln[len(f"ldpool: {f}: "):]
            elif "version" in ln:
                f = next((f for f in chunk if ln.startswith(f + ": ")), None)
                versions.setdefault(f, []).append(ln)
        for f, lns in versions.items():
            listings[f] = listings.get(f, []) + lns
    return {f: strip_addresses(v) for f, v in listings.items()}, errors


def compare(files, env, label):
    env = dict(env)
    t0 = time.monotonic()
    ours, errors = ldpool_ldd(files, env)
    t_ours = time.monotonic() - t0
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as ex:
        oracle = list(ex.map(lambda f: ldso_oracle(f, env), files))
    t_ldso = time.monotonic() - t0
    equal, skipped, missing, bad = 0, 0, 0, []
    for f, (kind, want) in zip(files, oracle):
        if kind == "refused":
            skipped += 1
            if f in ours:
                bad.append((f, "ld.so refuses it but ldpool lists it", want, ours[f]))
            continue
        if ours.get(f) == want:
            equal += 1
            missing += kind == "missing"
        else:
            bad.append((f, want, ours.get(f), errors.get(f)))
    print(f"\n  ldd {label}: files={len(files)} compared={len(files) - skipped} equal={equal} "
          f"(with not-found lines: {missing}) skipped(ld.so refuses)={skipped}; "
          f"ldpool {t_ours:.1f}s in {(len(files) + CHUNK - 1) // CHUNK} process(es), ld.so {t_ldso:.1f}s")
    assert not bad, bad[:5]
    assert equal > 0
    return equal, skipped


def test_system_programs_and_libraries_match_ld_so():
    files = system_files()
    assert len(files) > 100
    equal, skipped = compare(files, {}, "system")
    assert equal > 0.9 * len(files)


@pytest.mark.parametrize("label,env", [
    ("LD_LIBRARY_PATH", {"LD_LIBRARY_PATH": "/usr/lib/llvm-14/lib:/nonexistent::/usr/lib/x86_64-linux-gnu/libfakeroot;"
                                            "$ORIGIN/../lib:/usr/lib/x86_64-linux-gnu/perl5/5.36/auto/Encode"}),
    ("LD_PRELOAD", {"LD_PRELOAD": "libz.so.1:/lib/x86_64-linux-gnu/libm.so.6 libnothere.so libstdc++.so.6"}),
    ("LD_PRELOAD+LD_LIBRARY_PATH", {"LD_PRELOAD": "libfakeroot-sysv.so",
                                    "LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu/libfakeroot"}),
])
def test_environment_variants_match_ld_so(label, env):
    files = system_files()[::9]
    compare(files, env, label)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("lddtrees"))


def test_trees_through_the_cli(tree):
    """The gcc-built scenarios that need no special environment, all in one
    ldpool process, as ld.so --list (or ldd when libraries are missing)."""
    _, S = tree
    files = sorted({prog for prog, env, cwd in S.values() if not env and cwd is None})
    ours, errors = ldpool_ldd(files, {})
    for f in files:
        kind, want = ldso_oracle(f, {})
        if kind == "refused":
            assert f in errors and f not in ours
        else:
            assert ours.get(f) == want, (f, errors.get(f))


def test_single_file_no_header_and_exit_status(tree):
    r = run_ldpool("ldd", "/bin/true")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == "\tlinux-vdso.so.1 (0x0000000000000000)"
    assert lines[1] == "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x0000000000000000)"
    assert lines[2] == "\t/lib64/ld-linux-x86-64.so.2 (0x0000000000000000)"
    _, S = tree
    r = run_ldpool("ldd", S["missing"][0])
    assert r.returncode == 1 and "\tlibgone.so => not found" in r.stdout.splitlines()


def test_bad_files_one_line_each_and_continue(tmp_path, tree):
    t, _ = tree
    (tmp_path / "text").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "trunc").write_bytes(open("/bin/true", "rb").read()[:100])
    files = [str(tmp_path / "text"), "/bin/true", str(tmp_path / "trunc"), t.p("badm/libwc.so"),
             t.p("bad32/libwc.so"), str(tmp_path / "none"), str(tmp_path), "/usr/bin/ls"]
    r = run_ldpool("ldd", *files)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    err = r.stderr.splitlines()
    assert len(err) == 6, err
    for f, word in zip([files[0], files[2], files[3], files[4], files[5], files[6]],
                       ["not an ELF", "truncated", "machine", "ELFCLASS32", "no such file", "directory"]):
        line = [ln for ln in err if ln.startswith(f"ldpool: {f}: ")]
        assert line and word in line[0], (f, err)
    out = r.stdout.splitlines()
    assert "/bin/true:" in out and "/usr/bin/ls:" in out
    assert out[out.index("/usr/bin/ls:") + 2].startswith("\tlibselinux.so.1 => ")


def test_static_programs(tmp_path):
    src = tmp_path / "s.c"
    src.write_text("int main(void){return 0;}\n")
    subprocess.run(["gcc", "-static", "-o", str(tmp_path / "static"), str(src)], check=True)
    subprocess.run(["gcc", "-static-pie", "-o", str(tmp_path / "spie"), str(src)], check=True)
    r = run_ldpool("ldd", str(tmp_path / "static"), str(tmp_path / "spie"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"ldpool: {tmp_path / 'static'}: not a dynamic executable"
    want = subprocess.run([RTLD, "--list", str(tmp_path / "spie")], capture_output=True, text=True).stdout
    assert r.stdout.splitlines()[1:] == want.splitlines() == ["\tstatically linked"]


def test_json_output(tree):
    _, S = tree
    r = run_ldpool("ldd", "--json", "/bin/ls", S["missing"][0], "/nonexistent-file")
    data = json.loads(r.stdout)
    assert [d["file"] for d in data] == ["/bin/ls", S["missing"][0], "/nonexistent-file"]
    ls = data[0]
    assert [o["name"] for o in ls["objects"]][:3] == ["libselinux.so.1", "libc.so.6", "libpcre2-8.so.0"]
    libc = ls["objects"][1]
    assert libc["glibc"] and libc["path"] == "/lib/x86_64-linux-gnu/libc.so.6" and libc["address"] == 0
    assert data[1]["missing"][0]["name"] == "libgone.so" and not data[1]["objects"][1]["found"]
    assert "no such file" in data[2]["error"]


def test_bindings_flag(tmp_path):
    """`ldd --bindings` prints exactly glibc's start-up binding lines of the
    program's non-glibc objects (LD_BIND_NOW=1 LD_DEBUG=bindings, no PID)."""
    prog = "/usr/bin/xz"
    r = run_ldpool("ldd", "--bindings", prog)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    ours = r.stdout.splitlines()
    assert ours and all(l.startswith("binding file ") for l in ours)
    theirs = glibc_bindings(prog, ["--version"], tmp_path)
    requesters = {binding_requester(l) for l in ours}
    assert requesters == {prog, "/lib/x86_64-linux-gnu/liblzma.so.5"}
    theirs = {l for l in theirs if binding_requester(l) in requesters}
    assert set(ours) == theirs and len(ours) == len(set(ours))


def test_many_files_per_process_are_fast():
    files = system_files()
    t0 = time.monotonic()
    r = run_ldpool("ldd", *files[:CHUNK], timeout=600)
    dt = time.monotonic() - t0
    assert r.stdout.count(":\n") >= min(CHUNK, len(files)) // 2
    print(f"\n  ldpool ldd: {min(CHUNK, len(files))} files in one process: {dt:.2f}s")
    assert dt < 30


def test_system_programs_started_by_the_kernel_match():
    """resolve_program's default (a program the kernel starts: $ORIGIN from
    its real path, ld.so named by PT_INTERP) against each program executed
    with LD_TRACE_LOADED_OBJECTS=1.  Only programs whose interpreter is
    ld.so (anything else would really run); set-id programs, which ld.so
    refuses to trace (exit 5), are counted as skipped."""
    from loader import searchpath
    from loader.elf import ElfFile
    from loader.errors import LdpoolError
    from loader.ldd import format_listing
    from loader.resolve import SearchContext, resolve_program
    progs = []
    for f in system_files():
        if f.startswith("/lib/") or not os.access(f, os.X_OK):
            continue
        try:
            if ElfFile(f).interp == RTLD:
                progs.append(f)
        except LdpoolError:
            continue

    def traced(f):
        r = subprocess.run([f], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                           env=dict(BASE_ENV, LD_TRACE_LOADED_OBJECTS="1"))
        return r.returncode, strip_addresses(r.stdout.splitlines())

    with ThreadPoolExecutor(2) as ex:
        oracle = list(ex.map(traced, progs))
    files = searchpath.FileCache()
    equal, skipped, bad = 0, 0, []
    for f, (rc, want) in zip(progs, oracle):
        if rc == 5:
            skipped += 1
            continue
        res = resolve_program(f, env=BASE_ENV, context=SearchContext(BASE_ENV, files=files))
        got = strip_addresses(format_listing(res))
        if rc == 0 and got == want:
            equal += 1
        else:
            bad.append((f, rc, want, got))
    print(f"\n  exec'd programs: {len(progs)} equal={equal} skipped(set-id, not traceable)={skipped}")
    assert not bad, bad[:3]
    assert equal > 0.9 * len(progs)


def test_addresses_from_a_running_broker(tmp_path):
    """With a broker holding images, ldd shows where they are placed (the
    image's start, as ld.so shows a library's first mapped address); glibc's
    family stays with ld.so and shows 0."""
    from broker_helpers import BrokerProc
    b = BrokerProc(tmp_path / "b", linger=60).start()
    try:
        with b.connect(name="test") as conn:
            conn.acquire_program("/usr/bin/xz", env={})
            images = {os.path.realpath(im["path"]): int(im["map_start"], 16) for im in b.stats()["images"]}
            r = run_ldpool("ldd", "/usr/bin/xz", env=dict(os.environ, LDPOOL_SOCKET=b.socket))
        lzma = os.path.realpath("/lib/x86_64-linux-gnu/liblzma.so.5")
        assert images.get(lzma)
        lines = r.stdout.splitlines()
        assert f"\tliblzma.so.5 => /lib/x86_64-linux-gnu/liblzma.so.5 (0x{images[lzma]:016x})" in lines
        assert "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x0000000000000000)" in lines
        # no broker there: zeros, and none is started
        r = run_ldpool("ldd", "/usr/bin/xz", env=dict(os.environ, LDPOOL_SOCKET=str(tmp_path / "none.sock")))
        assert "(0x0000000000000000)" in r.stdout.splitlines()[1] and not (tmp_path / "none.sock").exists()
    finally:
        b.cleanup()
