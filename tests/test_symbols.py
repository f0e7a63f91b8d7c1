"""Symbol lookup rules on small programs built here, each checked two ways
against glibc: the LD_DEBUG=bindings lines must be equal, and every word
that ld.so relocated in the live process must equal ours.  Plus direct
Scope.lookup checks of the versioning rules.

Cases: symbol versions (old/new/unversioned executables of one library),
weak definitions and undefined weak references, protected functions whose
address the program takes, copy relocations, interposition by the program,
STB_GNU_UNIQUE (C++), hidden definitions, SysV-only hash tables, the
breadth-first global scope, and TLS (global- and initial-exec).
"""
import os
import shutil
import subprocess
import textwrap

import pytest

from engine_support import file_image, live_check, live_l_addrs, resolve
from loader.scope import Scope
from test_bindings import glibc_bindings, requester
from loader import bindings

WAIT = textwrap.dedent("""
    #include <stdio.h>
    #include <string.h>
    static void wait_if_asked(int argc, char **argv) {
        if (argc > 1 && !strcmp(argv[1], "wait")) {
            char line[64]; puts("ready"); fflush(stdout);
            if (!fgets(line, sizeof line, stdin)) return;
        }
    }
""")

SOURCES = {
    # symbol versions: foo@V1 and foo@@V2 in the new library
    "v1.map": "V1 { global: foo; bar; local: *; };\n",
    "v2.map": "V1 { global: foo; bar; local: *; };\nV2 { global: foo; } V1;\n",
    "libv_old.c": "int foo(void) { return 1; }\nint bar(void) { return 100; }\n",
    "libv_new.c": ('int foo_v1(void) { return 1; }\nint foo_v2(void) { return 2; }\n'
                   '__asm__(".symver foo_v1,foo@V1");\n__asm__(".symver foo_v2,foo@@V2");\n'
                   'int bar(void) { return 100; }\n'),
    "mainv.c": WAIT + ("int foo(void); int bar(void);\n"
                       "int main(int c, char **v) { wait_if_asked(c, v); return foo() + bar() == 0; }\n"),
    # weak: libw1 has a weak wfunc, libw2 a global one; first in scope wins
    "libw1.c": "__attribute__((weak)) int wfunc(void) { return 1; }\nint w1(void) { return wfunc(); }\n",
    "libw2.c": "int wfunc(void) { return 2; }\n",
    # protected function; the program defines one of the same name and takes the lib's address
    "libp.c": ('__attribute__((visibility("protected"))) int pfun(void) { return 1; }\n'
               'int call_pfun(void) { return pfun(); }\nvoid *addr_pfun(void) { return (void *)&pfun; }\n'
               # a symbolic R_X86_64_64 against the protected symbol (the linker keeps it)
               '__asm__(".data\\n.globl pptr\\npptr: .quad pfun\\n.text\\n");\n'
               '__attribute__((visibility("hidden"))) int hid(void) { return 7; }\n'
               'int use_hid(void) { return hid(); }\n'),
    # copy relocation and interposition
    "libd.c": ("int counter = 5; const char *names[2] = {\"a\", \"b\"};\n"
               "int get_counter(void) { return counter; }\nint greet(void) { return 1; }\n"
               "int call_greet(void) { return greet(); }\n"),
    # a library whose global hid() must be found past libp's hidden one
    "libh.c": "int hid(void) { return 8; }\n",
    # SysV-only hash; calls back into the program
    "libs.c": "int from_exe(void);\nint sysv_fn(void) { return from_exe(); }\n",
    # breadth-first scope: exe -> A, B; A -> C; B and C define deep()
    "libC.c": "int deep(void) { return 3; }\nint c_calls_deep(void) { return deep(); }\n",
    "libA.c": "int c_calls_deep(void);\nint who(void) { return 1; }\nint a(void) { return c_calls_deep(); }\n",
    "libB.c": "int who(void) { return 2; }\nint deep(void) { return 2; }\n",
    # TLS
    # TLS descriptors (-mtls-dialect=gnu2): R_X86_64_TLSDESC
    "libt2.c": "__thread int t2var = 5; static __thread int t2loc = 6;\n"
               "int t2(void) { return t2var + t2loc; }\n",
    "libt.c": ("__thread int tvar = 3; static __thread int tlocal = 4;\n"
               "int *tls_addr(void) { return &tvar; }\nint *tls_local(void) { return &tlocal; }\n"),
    "main.c": WAIT + textwrap.dedent("""
        int w1(void); int wfunc(void); int call_pfun(void); void *addr_pfun(void);
        int use_hid(void); int hid(void); extern int counter; extern const char *names[2];
        int get_counter(void); int call_greet(void); int sysv_fn(void); int who(void); int a(void);
        int deep(void); int t2(void); int *tls_addr(void); int *tls_local(void); extern __thread int tvar;
        __attribute__((weak)) int missing_weak(void);
        int pfun(void) { return 10; }
        int greet(void) { return 20; }
        int from_exe(void) { return 30; }
        void *volatile keep[4];
        int main(int c, char **v) {
            wait_if_asked(c, v);
            keep[0] = (void *)&pfun; keep[1] = (void *)&missing_weak; keep[2] = names; keep[3] = &tvar;
            return w1() + wfunc() + call_pfun() + (addr_pfun() != 0) + use_hid() + hid() + counter
                + get_counter() + call_greet() + sysv_fn() + who() + a() + deep() + *tls_addr()
                + *tls_local() + tvar + t2() == 0;
        }
    """),
    # dlopen(RTLD_LOCAL) of libA (needs libC) from a program linked with libB
    "maindl.c": WAIT + textwrap.dedent("""
        #include <dlfcn.h>
        int who(void);
        int main(int c, char **v) {
            void *h = dlopen("libA.so", RTLD_NOW | RTLD_LOCAL);
            wait_if_asked(c, v);
            return !h || who() == 0;
        }
    """),
    # an undefined (non-weak) symbol: glibc refuses to start with LD_BIND_NOW
    "libx.c": "int nosuch(void);\nint x(void) { return nosuch(); }\n",
    "mainx.c": "int x(void);\nint main(void) { return x(); }\n",
    # STB_GNU_UNIQUE from C++ inline function statics, in two libraries
    "u.h": "inline int &uniq() { static int c; return c; }\n",
    "libu1.cpp": '#include "u.h"\nint u1() { return ++uniq(); }\n',
    "libu2.cpp": '#include "u.h"\nint u2() { return ++uniq(); }\n',
    "mainu.cpp": WAIT + ('#include "u.h"\nint u1(); int u2();\n'
                         'int main(int c, char **v) { wait_if_asked(c, v); return u1() + u2() + uniq() == 0; }\n'),
}

BUILD = """
set -e
cc -O1 -fPIC -shared -o old/libv.so.1 -Wl,-soname,libv.so.1 -Wl,--version-script=v1.map libv_old.c
cc -O1 -fPIC -shared -o plain/libv.so.1 -Wl,-soname,libv.so.1 libv_old.c
cc -O1 -fPIC -shared -o libv.so.1 -Wl,-soname,libv.so.1 -Wl,--version-script=v2.map libv_new.c
ln -sf libv.so.1 old/libv.so; ln -sf libv.so.1 plain/libv.so; ln -sf libv.so.1 libv.so
cc -O1 -o exe_old mainv.c -Lold -lv -Wl,-rpath,'$ORIGIN'
cc -O1 -o exe_unversioned mainv.c -Lplain -lv -Wl,-rpath,'$ORIGIN'
cc -O1 -o exe_new mainv.c -L. -lv -Wl,-rpath,'$ORIGIN'
rm libv.so
for l in w1 w2 p d h t C B; do cc -O1 -fPIC -shared -o lib$l.so lib$l.c; done
cc -O1 -fPIC -shared -mtls-dialect=gnu2 -o libt2.so libt2.c
cc -O1 -fPIC -shared -Wl,--hash-style=sysv -o libs.so libs.c
cc -O1 -fPIC -shared -o libA.so libA.c -L. -lC -Wl,-rpath,'$ORIGIN'
cc -O1 -no-pie -fno-pic -rdynamic -Wl,--hash-style=sysv -o exe main.c -L. -lw1 -lw2 -lp -ld -lh -ls -lA -lB -lt -lt2 \
   -Wl,-rpath,'$ORIGIN' -Wl,-rpath-link,.
cc -O1 -o exe_pie main.c -L. -lw1 -lw2 -lp -ld -lh -ls -lA -lB -lt -lt2 -Wl,-rpath,'$ORIGIN' -Wl,-rpath-link,.
cc -O1 -fPIC -shared -o libx.so libx.c
cc -O1 -o exe_x mainx.c -L. -lx -Wl,-rpath,'$ORIGIN' -Wl,--allow-shlib-undefined
cc -O1 -o exe_dl maindl.c -L. -lB -Wl,-rpath,'$ORIGIN'
g++ -O1 -fPIC -shared -o libu1.so libu1.cpp
g++ -O1 -fPIC -shared -o libu2.so libu2.cpp
g++ -O1 -o exe_u mainu.cpp -L. -lu1 -lu2 -Wl,-rpath,'$ORIGIN'
"""

EXES = ["exe_old", "exe_unversioned", "exe_new", "exe", "exe_pie", "exe_u"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not shutil.which("cc") or not shutil.which("g++"):
        pytest.fail("cc and g++ are needed (build-essential)")
    d = tmp_path_factory.mktemp("symcases")
    (d / "old").mkdir()
    (d / "plain").mkdir()
    for name, text in SOURCES.items():
        (d / name).write_text(text)
    r = subprocess.run(["sh", "-c", BUILD], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}


@pytest.mark.parametrize("exe", EXES)
def test_bindings_and_words_equal_glibc(built, exe, tmp_path):
    path = str(built / exe)
    res = resolve(path, env=_env())
    ours = {bindings.format_binding(b) for b in bindings.compute_bindings(res)}
    start = {bindings.display_name(o, i) for i, o in enumerate(res.objects) if not o.is_glibc}
    theirs = {l for l in glibc_bindings(path, [], tmp_path) if requester(l) in start}
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []
    # the words ld.so wrote, in a live process of the same program
    env = dict(_env(), LD_BIND_NOW="1")
    p = subprocess.Popen([path, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert p.stdout.readline() == b"ready\n"
        scope = Scope([(o.elf, a, o.is_glibc) for o, a in zip(res.objects, live_l_addrs(p.pid, res.objects))])
        total = 0
        for i, o in enumerate(res.objects):
            if o.is_glibc:
                continue
            checked, deferred, bad = live_check(p.pid, scope, i)
            assert bad == []
            total += checked
        print(f"{exe}: {len(ours)} bindings and {total} relocated words equal glibc's")
    finally:
        p.kill()
        p.wait()


def _scope(built, exe):
    res = resolve(str(built / exe), env=_env())
    return res, Scope.from_resolution(res)


def _def_version(scope, found):
    d, s, _ = found
    elf = scope.elf(d)
    return elf.versions[elf.versym[s] & 0x7FFF].name


def test_version_rules(built):
    for exe, want in (("exe_old", "V1"), ("exe_unversioned", "V1"), ("exe_new", "V2")):
        res, scope = _scope(built, exe)
        libv = next(i for i, o in enumerate(res.objects) if o.elf.soname == "libv.so.1")
        # what the program's own reference binds to
        from _native import reloc
        b = reloc.bind(scope, 0)
        k = next(k for k in range(b.count) if scope.elf(0).symbol(b.symidx[k]).name == "foo")
        assert b.target[k] == libv
        found = (libv, scope.native.py_resolve_ref(0, b.symidx[k])[2], 0)
        assert _def_version(scope, found) == want, exe
    # explicit versions: the hidden V1 only when asked for exactly
    assert _def_version(scope, scope.lookup("foo", "V1")) == "V1"
    assert _def_version(scope, scope.lookup("foo", "V2")) == "V2"
    assert scope.lookup("foo", "V9") is None
    # an unversioned lookup (relocation rules) picks the oldest, V1; dlsym the default, V2
    assert _def_version(scope, scope.lookup("foo")) == "V1"
    assert _def_version(scope, scope.lookup("foo", newest=True)) == "V2"
    assert _def_version(scope, scope.lookup("foo", newest=True, search_list=[libv])) == "V2"
    assert scope.lookup("foo", search_list=[0]) is None
    # a versioned reference to an object without versions matches
    res, scope = _scope(built, "exe_unversioned")
    assert scope.lookup("bar", "V1") is not None


def test_scope_rules(built):
    res, scope = _scope(built, "exe")
    idx = {os.path.basename(o.path): i for i, o in enumerate(res.objects)}
    assert scope.lookup("wfunc")[0] == idx["libw1.so"]         # weak, but first
    assert scope.lookup("deep")[0] == idx["libB.so"]           # breadth first
    assert scope.lookup("hid")[0] == idx["libh.so"]            # hidden skipped
    assert scope.lookup("pfun")[0] == 0                        # the program interposes
    assert scope.lookup("missing_weak") is None
    st, d, s, prot = scope.native.py_resolve_ref(idx["libp.so"], _symidx(scope.elf(idx["libp.so"]), "pfun"), 1)
    assert (d, prot) == (idx["libp.so"], 1)                    # protected binds to itself
    st, d, s, prot = scope.native.py_resolve_ref(0, _symidx(scope.elf(0), "counter"), 2)
    assert d == idx["libd.so"]                                 # COPY skips the program


def test_rtld_local_scope(built, tmp_path):
    """Objects of a dlopen(RTLD_LOCAL) search the global scope, then the
    dlopen root's search list: libA's c_calls_deep comes from libC, libC's
    deep() from libB (global) although libC defines one."""
    from loader.resolve import resolve_dlopen
    path = str(built / "exe_dl")
    res = resolve(path, env=_env())
    nglobal = len(res.objects)
    new = resolve_dlopen(res, "libA.so", res.objects[0])
    assert [os.path.basename(o.path) for o in new] == ["libA.so", "libC.so"]
    local = list(range(nglobal, len(res.objects)))
    scope = Scope([(o.elf, 0, o.is_glibc) for o in res.objects], global_count=nglobal,
                  local_scopes={i: local for i in local})
    auto = {bindings.format_binding(b) for b in bindings.compute_bindings(res)}
    ours = set()
    for b in bindings.compute_bindings(res, scope):
        if b.requester in (new[0].path, new[1].path):
            ours.add(bindings.format_binding(b))
    theirs = {l for l in glibc_bindings(path, [], tmp_path) if requester(l) in (new[0].path, new[1].path)}
    assert ours == theirs
    assert {l for l in auto if requester(l) in (new[0].path, new[1].path)} == theirs
    assert any("libC.so [0]: normal symbol `c_calls_deep'" in l for l in ours)
    assert any("to " + str(built / "libB.so") + " [0]: normal symbol `deep'" in l for l in ours)
    # the program itself does not see libA's symbols (RTLD_LOCAL)
    assert scope.lookup("a", None, 0) is None and scope.lookup("a", None, local[0])[0] == local[0]
    # and the words ld.so wrote into libA and libC
    p = subprocess.Popen([path, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=dict(_env(), LD_BIND_NOW="1"))
    try:
        assert p.stdout.readline() == b"ready\n"
        live = Scope([(o.elf, a, o.is_glibc) for o, a in zip(res.objects, live_l_addrs(p.pid, res.objects))],
                     global_count=nglobal, local_scopes={i: local for i in local})
        for i in local:
            checked, deferred, bad = live_check(p.pid, live, i)
            assert bad == [] and checked > 0
    finally:
        p.kill()
        p.wait()


def test_undefined_symbol_message(built):
    from _native import reloc
    path = str(built / "exe_x")
    r = subprocess.run([path], env=dict(_env(), LD_BIND_NOW="1"), capture_output=True, text=True)
    assert r.returncode != 0
    res, scope = _scope(built, "exe_x")
    i = next(i for i, o in enumerate(res.objects) if o.path.endswith("libx.so"))
    b = reloc.bind(scope, i)
    assert [u[0] for u in b.undefined] == ["nosuch"]
    assert r.stderr.strip() == f"{path}: symbol lookup error: {reloc.undefined_message(*b.undefined[0])}"
    k = next(k for k in range(b.count) if b.target[k] == -3)
    img, image_addr = file_image(scope.elf(i), 0)
    assert k in set(reloc.apply(img, image_addr, b))


def _symidx(elf, name):
    return next(i for i in range(1, elf.nsyms) if elf.symbol(i).name == name)
