"""loader.resolve against the real ld.so on trees built with gcc: RPATH and
RUNPATH rules, precedence, DSTs, SONAME matching, file identity, wrong
class/machine candidates, bad candidates, missing libraries, hwcaps
subdirectories, LD_LIBRARY_PATH and LD_PRELOAD forms, DF_1_NODEFLIB,
cycles, symlinked programs; started by the kernel and by `ld.so FILE`.
dlopen is checked against a program that dlopens and prints its link map."""
import os
import subprocess

import pytest

from loader.errors import LdpoolError, ResolveError
from loader.ldd import format_listing
from loader.resolve import (resolve_dlopen, resolve_library, resolve_program, is_glibc_soname,
                            clear_caches)
from ldtrees import BASE_ENV, Tree, build_tree, ldso_error, ldso_trace, strip_addresses


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    t, scenarios = build_tree(tmp_path_factory.mktemp("trees"))
    clear_caches()
    return t, scenarios


SCENARIOS = ["rpath_chain", "runpath_own", "runpath_stops_chain", "rpath_continues_chain",
             "prec_rpath_vs_llp", "prec_llp_vs_runpath", "prec_runpath_alone", "dst_tokens",
             "soname_match", "same_file_two_names", "skip_wrong_class_machine", "only_wrong_class",
             "invalid_candidate", "missing", "hwcaps_subdirs", "slash_names", "slash_names_other_cwd",
             "llp_empty_is_cwd", "llp_relative", "llp_semicolon_origin", "preload", "nodeflib",
             "nodeflib_llp", "circular", "library_as_main", "symlinked_program", "relative_program_path",
             "filters", "filter_moves_later_filtee", "filter_missing", "hwcaps_tuned_down", "hwcaps_no_v2",
             "hwcap_mask_zero", "symbol_versions", "other_interp_name", "ld_so_needed_first",
             "preload_dst", "llp_platform_lib"]


def ours(prog, env, cwd, kernel):
    try:
        res = resolve_program(prog, env=dict(BASE_ENV, **env), cwd=cwd, explicit_loader=not kernel)
    except LdpoolError as e:
        return None, str(e), None
    return strip_addresses(format_listing(res)), None, res


@pytest.mark.parametrize("scenario,kernel", [(s, k) for s in SCENARIOS for k in (False, True)
                                             if not (k and s == "library_as_main")],  # not executable
                         ids=lambda v: {False: "ld.so-FILE", True: "exec"}.get(v, v) if isinstance(v, bool) else v)
def test_tree_matches_ld_so(tree, scenario, kernel):
    _, S = tree
    prog, env, cwd = S[scenario]
    rc, want, err = ldso_trace(prog, env, cwd, kernel)
    got, problem, res = ours(prog, env, cwd, kernel)
    if rc != 0:
        assert problem is not None and problem == ldso_error(err), (err, problem)
        return
    assert problem is None, (problem, want)
    assert got == want
    # ld.so's messages besides the listing: bad LD_PRELOAD entries, symbol versions
    want_err = [ln for ln in err.splitlines() if ln.startswith("ERROR: ld.so") or "version" in ln]
    assert res.warnings + [f"{prog}: {m}" for _, m in res.version_problems] == want_err


def test_scenarios_exercise_what_they_claim(tree):
    """The trees really contain the cases (so the comparisons above test them)."""
    _, S = tree

    def listing(name, kernel=False):
        prog, env, cwd = S[name]
        got, problem, res = ours(prog, env, cwd, kernel)
        return res, problem

    res, _ = listing("rpath_chain")
    assert [o.name for o in res.objects][1:4] == ["liba.so", "libc.so.6", "libb.so"]
    res, _ = listing("runpath_own")
    assert [n for n, _ in res.missing] == ["libb.so"]
    res, _ = listing("prec_rpath_vs_llp")
    assert "/p_rpath/" in res.objects[1].path
    res, _ = listing("prec_llp_vs_runpath")
    assert "/p_llp/" in res.objects[1].path
    res, _ = listing("soname_match")
    need = [o for o in res.objects if o.name == "libneedsoname.so"][0]
    assert need.deps[0].name == "libfile.so.1" and "libsoname.so.2" in need.deps[0].names
    res, _ = listing("same_file_two_names")
    assert res.main.deps[0] is res.main.deps[1]
    res, _ = listing("skip_wrong_class_machine")
    assert "/good/" in res.objects[1].path
    _, problem = listing("invalid_candidate")
    assert problem.endswith("/badelf/libwc.so: invalid ELF header")
    res, _ = listing("missing")
    assert [n for n, _ in res.missing] == ["libgone.so", "libgone.so", "libgone2.so"]
    assert res.main.deps[1] is None
    res, _ = listing("symlinked_program")
    assert [n for n, _ in res.missing] == ["libreal.so"]
    res, _ = listing("symlinked_program", kernel=True)
    assert not res.missing and res.objects[1].path.endswith("/real/bin/../rlib/libreal.so")
    res, _ = listing("nodeflib")
    assert [n for n, _ in res.missing] == ["libc.so.6"]
    res, _ = listing("preload")
    assert [o.kind for o in res.objects[:3]] == ["main", "preload", "preload"]
    assert res.warnings and "libnothere.so" in res.warnings[0]
    res, _ = listing("hwcaps_subdirs")
    assert "/hw/glibc-hwcaps/" in res.objects[1].path or "/hw/tls/" in res.objects[1].path


def test_api_fields(tree):
    t, S = tree
    res = resolve_program("/bin/ls", env=BASE_ENV)
    assert res.main.kind == "main" and res.main.index == 0 and res.main.loader is None
    assert res.interp == "/lib64/ld-linux-x86-64.so.2"
    names = [o.name for o in res.objects]
    assert names[1] == "libselinux.so.1" and "libc.so.6" in names
    libc = res.objects[names.index("libc.so.6")]
    assert libc.is_glibc and libc.soname == "libc.so.6" and libc.elf.soname == "libc.so.6"
    assert libc.realpath == os.path.realpath(libc.path)
    assert libc.loader is res.main
    assert [o.index for o in res.objects] == list(range(len(res.objects)))
    pcre = res.objects[names.index("libpcre2-8.so.0")]
    assert pcre.loader.name == "libselinux.so.1" and not pcre.is_glibc
    interp = [o for o in res.objects if o.kind == "interp"][0]
    assert interp.is_glibc and interp.path == "/lib64/ld-linux-x86-64.so.2"
    for soname in ("libnss_files.so.2", "libm.so.6", "ld-linux-x86-64.so.2"):
        assert is_glibc_soname(soname)
    # libthread_db binds to its user's ps_* functions: pooled
    for soname in ("libstdc++.so.6", None, "libthread_db.so.1"):
        assert not is_glibc_soname(soname)
    # preload given explicitly rather than through the environment
    res = resolve_program("/bin/true", env=BASE_ENV, preload=["libz.so.1"])
    assert res.objects[1].name == "libz.so.1" and res.objects[1].kind == "preload"


def test_errors_are_ldpool_errors(tree, tmp_path):
    t, _ = tree
    (tmp_path / "text").write_text("hello\n")
    (tmp_path / "short").write_bytes(b"\x7fELF")
    for path, problem in ((str(tmp_path / "text"), "not an ELF file"), (str(tmp_path / "short"), "truncated"),
                          (str(tmp_path / "none"), "no such file"), (str(tmp_path), "is a directory"),
                          (t.p("bad32/libwc.so"), "ELFCLASS32"), (t.p("badm/libwc.so"), "machine")):
        with pytest.raises(LdpoolError) as ei:
            resolve_program(path, env=BASE_ENV)
        assert problem in str(ei.value) and path in str(ei.value)
    prog, env, cwd = build_missing = tree[1]["missing"]
    with pytest.raises(ResolveError, match="libgone.so: cannot open shared object file"):
        resolve_program(prog, env=BASE_ENV, trace=False)


# ---------------------------------------------------------------- dlopen
LINKMAP_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!dlopen(argv[i], RTLD_NOW)) { printf("ERR %s\n", dlerror()); return 1; }
  struct link_map *m = 0;
  dlinfo(dlopen(0, RTLD_NOW), RTLD_DI_LINKMAP, &m);
  for (m = m->l_next; m; m = m->l_next) printf("%s\n", m->l_name);
  return 0;
}
"""


@pytest.fixture(scope="module")
def linkmap_prog(tree):
    t, _ = tree
    return t._gcc(t.p("bin/linkmap"), LINKMAP_C, ["-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/../lib1"])


def real_linkmap(prog, names, env):
    r = subprocess.run([prog, *names], capture_output=True, text=True, env=dict(BASE_ENV, **env), timeout=60)
    return [ln for ln in r.stdout.splitlines() if ln != "linux-vdso.so.1"]


@pytest.mark.parametrize("names,env", [
    (["liba.so"], {}),                                   # through the main program's RPATH
    (["libz.so.1", "libc.so.6"], {}),                    # cache; then already loaded
    (["libprec.so"], {"LD_LIBRARY_PATH": "P_LLP"}),
    (["ABS_WC"], {}),                                    # a path
    (["libnothere.so"], {}),
    (["BAD32"], {}),                                     # only a 32-bit file
    (["PIE"], {}),                                       # an executable
    (["libcyc1.so"], {"LD_LIBRARY_PATH": "CYC"}),
    (["$ORIGIN/../lib1/liba.so"], {}),                   # DSTs in a dlopen path
    (["$PLATFORM/nothere.so", "libz.so.1"], {}),
])
def test_dlopen_matches_link_map(tree, linkmap_prog, names, env):
    t, _ = tree
    subst = {"P_LLP": t.p("p_llp"), "ABS_WC": t.p("good/libwc.so"), "BAD32": t.p("bad32/libwc.so"),
             "PIE": t.p("bin/rpath_chain"), "CYC": t.p("cyc")}
    names = [subst.get(n, n) for n in names]
    env = {k: subst.get(v, v) for k, v in env.items()}
    want = real_linkmap(linkmap_prog, names, env)
    res = resolve_program(linkmap_prog, env=dict(BASE_ENV, **env))
    before = list(res.objects)
    try:
        for n in names:
            new = resolve_dlopen(res, n, res.main)
            assert all(o.kind == "dlopen" or o.loader is not None for o in new)
    except ResolveError as e:
        assert want == [f"ERR {e}"]
        assert res.objects == before  # nothing half-loaded stays
        return
    got = [o.path for o in res.objects[1:] if o.kind != "main"]
    listing_order = [o.path for _, o in res.listing if o is not None]
    # the link map is ld.so's namespace list: startup objects, then dlopened ones
    assert want == listing_order + got[len(listing_order):]
    assert [o.index for o in res.objects] == list(range(len(res.objects)))


def test_resolve_library_alone(tree):
    t, _ = tree
    # liba needs libb, which only a main program's RPATH would find
    with pytest.raises(ResolveError, match="libb.so: cannot open shared object file"):
        resolve_library(t.p("lib1/liba.so"), env=BASE_ENV)
    res = resolve_library(t.p("lib1/liba.so"), env=dict(BASE_ENV, LD_LIBRARY_PATH=t.p("lib1")))
    assert [o.name for o in res.objects][:3] == [t.p("lib1/liba.so"), "libb.so", "libc.so.6"]
    assert res.objects[0].kind == "dlopen" and res.main is res.objects[0]
    res = resolve_library(t.p("cyc/libcyc1.so"), env=BASE_ENV)
    assert [o.name for o in res.objects[:2]] == [t.p("cyc/libcyc1.so"), "libcyc2.so"]
    res = resolve_library("libz.so.1", env=BASE_ENV)
    assert res.objects[0].path == "/lib/x86_64-linux-gnu/libz.so.1"
    assert [o.name for o in res.objects][1:] == ["libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
    assert res.objects[2].kind == "interp" and res.objects[2].path == "/lib64/ld-linux-x86-64.so.2"


def test_hwcaps_scenarios_pick_different_files(tree):
    """The CPU-dependent subdirectory choice really varies with the tunables."""
    _, S = tree
    picked = {}
    for name in ("hwcaps_subdirs", "hwcaps_tuned_down", "hwcaps_no_v2", "hwcap_mask_zero"):
        prog, env, cwd = S[name]
        res = resolve_program(prog, env=dict(BASE_ENV, **env), cwd=cwd)
        picked[name] = tuple(o.path.split("/hw/", 1)[1] for o in res.objects if "/hw/" in o.path)
    from loader import hwcaps
    # with the hwcap mask at 0, x86_64/ is searched only when it is AT_PLATFORM (not Intel's "haswell")
    hw2 = "x86_64/libhw2.so" if hwcaps.detect({"LD_HWCAP_MASK": "0"}).platform == "x86_64" else "libhw2.so"
    assert picked["hwcaps_tuned_down"][0] == "glibc-hwcaps/x86-64-v2/libhw.so"
    assert picked["hwcaps_no_v2"] == ("tls/libhw.so", hw2)
    assert picked["hwcap_mask_zero"][1] == hw2
    assert len(set(picked.values())) >= 3, picked


# ---------------------------------------------------------------- AT_SECURE
@pytest.fixture(scope="module")
def setuid_tree():
    """Set-user-ID-root programs in a world-readable directory, run as nobody."""
    import shutil
    import tempfile
    if os.geteuid() != 0 or subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                            "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and setpriv to run a set-user-ID program as another user")
    root = tempfile.mkdtemp(prefix="ldpool-suid-", dir="/tmp")
    os.chmod(root, 0o755)
    t = Tree(root)
    print_v = '#include <stdio.h>\nint v(void);\nint main(void){printf("%d\\n", v());return 0;}\n'
    for d, val in (("a", 1), ("b", 2)):
        t._gcc(t.p(f"{d}/libv.so"), f"int v(void){{return {val};}}\n", ["-shared", "-fPIC", "-Wl,-soname,libv.so"])
    t.lib("build/libq.so", soname="$ORIGIN/libq.so")
    progs = {
        "origin_rpath": t._gcc(t.p("bin/origin_rpath"), print_v, [t.p("a/libv.so"), "-Wl,--disable-new-dtags",
                                                                   "-Wl,-rpath,$ORIGIN/../a"]),
        "abs_rpath": t._gcc(t.p("bin/abs_rpath"), print_v, [t.p("a/libv.so"), "-Wl,--disable-new-dtags",
                                                             f"-Wl,-rpath,{t.p('a')}"]),
        "dst_needed": t._gcc(t.p("bin/dst_needed"), "int main(void){return 0;}\n",
                             ["-Wl,--no-as-needed", t.p("build/libq.so")]),
    }
    subprocess.run(["chmod", "-R", "a+rX", root], check=True)
    for p in progs.values():
        os.chmod(p, 0o4755)
    yield t, progs
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("prog,env", [
    ("origin_rpath", {}),                                   # $ORIGIN outside trusted dirs: dropped
    ("abs_rpath", {"LD_LIBRARY_PATH": "B"}),                # LD_LIBRARY_PATH ignored
    ("abs_rpath", {"LD_PRELOAD": "libm.so.6 B/libv.so"}),   # preloads: no '/', set-user-ID files only
    ("dst_needed", {}),                                     # no DSTs in DT_NEEDED
])
def test_secure_program_matches_ld_so(setuid_tree, prog, env):
    t, progs = setuid_tree
    env = {k: v.replace("B", t.p("b")) for k, v in env.items()}
    path = progs[prog]
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", path],
                       capture_output=True, text=True, env=dict(BASE_ENV, **env), timeout=60)
    try:
        res = resolve_program(path, env=dict(BASE_ENV, **env), secure=True, trace=False)
    except ResolveError as e:
        assert r.returncode == 127 and ldso_error(r.stderr) == str(e)
        return
    assert r.returncode == 0, r.stderr
    libv = [o for o in res.objects if o.name == "libv.so"][0]
    assert r.stdout.strip() == {"a": "1", "b": "2"}[os.path.basename(os.path.dirname(libv.path))]
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR: ld.so")] == res.warnings


def test_symbol_version_errors_stop_a_real_start(tree):
    _, S = tree
    prog = S["symbol_versions"][0]
    r = subprocess.run([prog], capture_output=True, text=True, env=BASE_ENV)
    assert r.returncode == 1
    with pytest.raises(ResolveError) as ei:
        resolve_program(prog, env=BASE_ENV, trace=False)
    assert f"{prog}: {ei.value}" in r.stderr.splitlines()
    res = resolve_program(prog, env=BASE_ENV)
    assert len(res.version_errors) == 1 and "VERS_1" in res.version_errors[0]
    assert any("no version information available" in m for f, m in res.version_problems if not f)


def test_corrupt_files_give_ldpool_errors_only(tmp_path):
    """Truncated or byte-flipped programs and libraries (found through
    LD_LIBRARY_PATH): a one-line LdpoolError or a result, never another
    exception."""
    import random
    from loader import searchpath
    from loader.resolve import SearchContext
    rng = random.Random(1234)
    sources = [open("/bin/ls", "rb").read(), open("/lib/x86_64-linux-gnu/libselinux.so.1", "rb").read()]
    outcomes = {"ok": 0, "error": 0}
    for i in range(160):
        data = bytearray(sources[i % 2])
        if i % 3 == 0:
            data = data[:rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randrange(1, 30)):
                data[rng.randrange(0, 8192)] = rng.randrange(256)
        d = tmp_path / str(i)
        d.mkdir()
        victim = d / ("prog" if i % 2 == 0 else "libselinux.so.1")
        victim.write_bytes(data)
        env = dict(BASE_ENV, LD_LIBRARY_PATH=str(d))
        prog = str(victim) if i % 2 == 0 else "/bin/ls"
        try:
            resolve_program(prog, env=env, context=SearchContext(env, files=searchpath.FileCache()))
            outcomes["ok"] += 1
        except LdpoolError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"]


def test_rebuilt_library_is_seen_without_clearing_caches(tmp_path):
    """The shared file cache checks what it remembers against the file
    system: a library rebuilt in place, or one added, counts at once."""
    t = Tree(tmp_path)
    t.lib("lib/libr.so")
    prog = t.exe("bin/r", needs=[t.p("lib/libr.so")], rpath="$ORIGIN/../lib")
    res = resolve_program(prog, env=BASE_ENV)
    assert not res.missing and res.objects[1].soname == "libr.so"
    t.lib("lib/libr.so", soname="librenamed.so")  # same path, new file
    res = resolve_program(prog, env=BASE_ENV)
    assert res.objects[1].soname == "librenamed.so"
    os.unlink(t.p("lib/libr.so"))
    assert [m.name for m in resolve_program(prog, env=BASE_ENV).missing] == ["libr.so"]
    t.lib("lib/libr.so")
    assert not resolve_program(prog, env=BASE_ENV).missing
