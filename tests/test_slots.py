"""The epoch's glibc stubs and the per-process slot table (loader/stubs.py,
_native/launcher/slots.c): pointer identity of glibc functions as pooled
code sees them, GOT pages without per-process words, one slot per
function for the whole plan, the registry across a broker restart, and the
slot table's memory in a real process."""
import json
import os
import signal
import subprocess
import textwrap

import pytest

from broker_helpers import BrokerProc, wait_for
from launcher_helpers import TIMEOUT, env, same  # noqa: F401  (env is a fixture)
from loader import client as C
from loader import planformat as pf
from loader import resolve
from loader.localpool import LocalPool
from loader.plan import build_plan
from loader.stubs import CAPACITY, StubRegion

LIB = textwrap.dedent("""
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    /* function addresses of glibc in RELRO (R_X86_64_64) and through the
     * GOT (GLOB_DAT): the same in every process once they are stubs */
    void *(*const lib_table[])(size_t) = {malloc};
    void *lib_free(void) { return (void *)&free; }
    void *lib_puts(void) { return (void *)&puts; }
    size_t lib_len(const char *s) { return strlen(s); }
    void lib_say(const char *s) { puts(s); }
""")

MAIN = textwrap.dedent("""
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    extern void *(*const lib_table[1])(size_t);
    void *lib_free(void), *lib_puts(void);
    unsigned long lib_len(const char *);
    void lib_say(const char *);
    int main(void)
    {
        void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        lib_say("stubbed call");
        printf("dlsym(RTLD_DEFAULT, puts) == &puts: %d\\n", dlsym(RTLD_DEFAULT, "puts") == (void *)&puts);
        printf("dlsym(RTLD_DEFAULT, free) == &free: %d\\n", dlsym(RTLD_DEFAULT, "free") == (void *)&free);
        printf("dlvsym(free, GLIBC_2.2.5) == &free: %d\\n",
               dlvsym(RTLD_DEFAULT, "free", "GLIBC_2.2.5") == (void *)&free);
        printf("dlsym(libc, puts) == &puts: %d\\n", libc && dlsym(libc, "puts") == (void *)&puts);
        printf("lib's &free == exe's &free: %d\\n", lib_free() == (void *)&free);
        printf("lib's &puts == exe's &puts: %d\\n", lib_puts() == (void *)&puts);
        printf("lib's table[0] == &malloc: %d\\n", lib_table[0] == malloc);
        Dl_info di;
        const char *base = "";
        if (dladdr((void *)lib_puts(), &di) && di.dli_fname) base = strrchr(di.dli_fname, '/') ? strrchr(di.dli_fname, '/') + 1 : di.dli_fname;
        printf("dladdr(&puts): %s %s, saddr == &puts: %d\\n", base, di.dli_sname ? di.dli_sname : "?",
               di.dli_saddr == (void *)&puts);
        void *p = lib_table[0](100);
        free(p);
        printf("strlen through a stub: %lu\\n", lib_len("four"));
        return 0;
    }
""")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("slots")
    (d / "id.c").write_text(LIB)
    (d / "main.c").write_text(MAIN)
    cc = lambda *a: subprocess.run(["gcc", "-O2", *a], check=True, cwd=d)
    cc("-fPIC", "-shared", "-Wl,-z,relro,-z,now", "-o", "libid.so", "id.c")
    cc("-o", "main", "main.c", "-L.", "-lid", "-Wl,-rpath,$ORIGIN", "-ldl")
    return d


def test_pointer_identity_as_natively(env, built):
    """Pooled code's &free, &puts and table entries are stubs: equal across
    pooled objects and to what dlsym/dlvsym give pooled code, as natively."""
    r = same([str(built / "main")], env)
    assert r.stdout.count(b": 1\n") == 8, r.stdout
    assert b"dladdr(&puts): libc.so.6 " in r.stdout
    assert b"stubbed call\n" in r.stdout and b"strlen through a stub: 4\n" in r.stdout


def test_function_pointers_need_no_fixup(built):
    """A library whose only references to glibc are function addresses
    gets no per-process fixup: its RELRO and GOT stay shared."""
    res = resolve.resolve_program(str(built / "main"), env={})
    with LocalPool() as pool:
        blob, counts = build_plan(res, pool, with_stats=True)
        p = pf.unpack(blob)
        k = next(i for i, o in enumerate(p.objects) if p.string(o["path"]).endswith("libid.so"))
        fs = counts[k]
        assert fs.counts["stub"] >= 5, dict(fs.counts)         # GLOB_DAT (weak too), R_64, JUMP_SLOT
        assert not [f for f in fs.fixes if f[1] != pf.FIX_ABS64], fs.fixes
        # one slot per function for the whole plan, numbered from 0 in the
        # pool's registry, filled from the plan's imports
        names = [(p.string(p.imports[imp][0]), k) for k, imp, _g, _f in p.slots]
        assert len({n for n, _ in names}) == len(names)
        assert {"free", "puts", "malloc", "strlen"} <= {n for n, _ in names}
        h = p.hdr
        assert h["stubs_addr"] == pool.stubs.addr and h["slots_addr"] == pool.stubs.slots_addr
        assert all(k < len(pool.stubs.names) for _n, k in names)


def test_registry_is_first_seen_and_bounded():
    s = StubRegion(0x3100_0000_0000, 0, capacity=3)
    assert [s.index("malloc", "GLIBC_2.2.5"), s.index("free", "GLIBC_2.2.5"),
            s.index("malloc", "GLIBC_2.2.5"), s.index("malloc", None)] == [0, 1, 0, 2]
    assert s.index("puts", "GLIBC_2.2.5") is None          # full: the caller keeps a fixup
    again = StubRegion.from_json(json.loads(json.dumps(s.to_json())))
    assert again.names == s.names and again.index("free", "GLIBC_2.2.5") == 1
    assert s.content() == again.content() and len(s.content()) == s.size
    big = StubRegion(0x3100_0000_0000, 0)
    assert big.capacity == CAPACITY and big.slots_addr - big.addr == big.size + 4096


def _broker_pool(env):
    r = subprocess.run(["ldpool", "pool", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _private_kb(pid, lo, hi):
    kb, cur = 0, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                a, b = (int(x, 16) for x in head[0].split("-"))
                cur = lo <= a and b <= hi
            elif cur and head[0] == "Private_Dirty:":
                kb += int(head[1])
    return kb


def test_slot_table_memory_of_python(env):
    """python3 with ssl, sqlite3 and ctypes imported (eleven pooled objects)
    dirties only a few pages of the slot table: not one per object."""
    code = "import ssl, sqlite3, ctypes, sys; print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen(["ldpool-exec", "--no-fallback", "python3", "-c", code], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read()
        st = _broker_pool(env)["stubs"]
        slots = int(st["slots_addr"], 16)
        assert st["registered"] > 100
        kb = _private_kb(proc.pid, slots, int(st["end"], 16))
        used_pages = -(-st["registered"] * 8 // 4096)
        assert 0 < kb <= 4 * used_pages, kb
        # the stub region is the pool's, mapped shared and executable
        with open(f"/proc/{proc.pid}/maps") as f:
            stub_maps = [ln for ln in f if ln.startswith(st["start"][2:] + "-")]
        assert stub_maps and " r-xs " in stub_maps[0], stub_maps
    finally:
        proc.stdin.close()
        proc.wait(timeout=TIMEOUT)


def test_registry_survives_a_broker_restart(tmp_path):
    """A broker killed with SIGKILL and restarted on the same pool and epoch
    keeps the stub region where it was and every slot index it handed out
    (pooled images and running processes use them); programs started
    after the restart run from the same images."""
    b = BrokerProc(tmp_path / "b").start()
    code = ("import ctypes, sqlite3; "
            "print(sqlite3.connect(':memory:').execute('select 6*7').fetchone()[0], ctypes.sizeof(ctypes.c_long))")
    e = dict(os.environ, LDPOOL_SOCKET=b.socket)
    argv = ["ldpool-exec", "--no-fallback", "python3", "-c", code]
    try:
        r = subprocess.run(argv, env=e, capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0 and r.stdout == b"42 8\n", r.stderr.decode(errors="replace")[-2000:]
        wait_for(lambda: b.stats()["totals"]["leases"] == 0, what="python's lease released")
        before = b.stats()
        assert before["stubs"]["registered"] > 100
        b.kill(signal.SIGKILL)
        b.start()
        after = b.stats()
        assert after["recovered"] and after["epoch"] == before["epoch"]
        assert after["stubs"] == before["stubs"]
        keys = {im["key"] for im in before["images"]}
        assert keys <= {im["key"] for im in after["images"]}
        r = subprocess.run(argv, env=e, capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0 and r.stdout == b"42 8\n", r.stderr.decode(errors="replace")[-2000:]
        assert b.stats()["stubs"]["registered"] == before["stubs"]["registered"]   # nothing new
    finally:
        b.cleanup()


def test_dlopen_fills_more_slots(env, tmp_path):
    """A dlopen'ed library's first use of a glibc function fills a new slot
    of the same table (made writable meanwhile): its calls work and its
    pointer is what dlsym gives, as natively."""
    (tmp_path / "plug.c").write_text(textwrap.dedent("""
        #include <stdlib.h>
        #include <string.h>
        static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
        void *plug_qsort(void) { return (void *)&qsort; }
        int plug_sorted(void)
        {
            int v[] = {3, 1, 2};
            char buf[] = "x,y", *save, *t = strtok_r(buf, ",", &save);
            qsort(v, 3, sizeof v[0], cmp);
            return v[0] * 100 + v[1] * 10 + v[2] + (t && !strcmp(t, "x")) * 1000;
        }
    """))
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #include <dlfcn.h>
        #include <stdio.h>
        int main(int argc, char **argv)
        {
            void *h = dlopen("./libplug.so", RTLD_NOW);
            if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
            void *(*q)(void) = (void *(*)(void))dlsym(h, "plug_qsort");
            int (*s)(void) = (int (*)(void))dlsym(h, "plug_sorted");
            printf("sorted %d\\n", s());
            printf("plugin's &qsort == dlsym(qsort): %d\\n", q() == dlsym(RTLD_DEFAULT, "qsort"));
            if (argc > 1)   /* pooled: the plugin's &qsort is the epoch's stub, in the broker's window */
                printf("stub in the window: %d\\n", (unsigned long)q() >> 44 == 2);
            return 0;
        }
    """))
    cc = lambda *a: subprocess.run(["gcc", "-O2", *a], check=True, cwd=tmp_path)
    cc("-fPIC", "-shared", "-o", "libplug.so", "plug.c")
    cc("-o", "main", "main.c", "-ldl")
    r = same([str(tmp_path / "main")], env, cwd=tmp_path)
    assert r.stdout == b"sorted 1123\nplugin's &qsort == dlsym(qsort): 1\n", r.stdout
    r = subprocess.run(["ldpool-exec", "--no-fallback", str(tmp_path / "main"), "x"], env=env, cwd=tmp_path,
                       capture_output=True, timeout=TIMEOUT)
    assert r.stdout.endswith(b"stub in the window: 1\n"), (r.stdout, r.stderr)


def test_stubs_outside_the_window_are_refused(tmp_path):
    """A plan naming a stub region or slot table outside the pool's
    placement window (the pool header's) is one line, exit 127."""
    import struct
    b = BrokerProc(tmp_path / "b").start()
    try:
        with b.connect() as c:
            plan = c.acquire_program("/usr/bin/xz")
            c.release(C.plan_lease(plan))
        h = pf.unpack(plan).hdr
        pool = "/dev/shm/" + b.pool.strip("/")
        for off, name in ((144, "stubs_addr"), (168, "slots_addr")):
            bad = bytearray(plan)
            struct.pack_into("<Q", bad, off, 0x1000_0000_0000 + (h[name] & 0xFFFF_FFFF))
            (tmp_path / f"{name}.plan").write_bytes(bad)
            r = subprocess.run(["ldpool-exec", "--plan", str(tmp_path / f"{name}.plan"), "--pool", pool,
                                "/usr/bin/xz", "--version"], capture_output=True, text=True, timeout=TIMEOUT)
            assert r.returncode == 127 and r.stderr.count("\n") == 1, (name, r.returncode, r.stderr)
            assert "outside the pool's placement window" in r.stderr, r.stderr
        # the plan as the broker made it runs from the same files
        (tmp_path / "good.plan").write_bytes(plan)
        r = subprocess.run(["ldpool-exec", "--plan", str(tmp_path / "good.plan"), "--pool", pool,
                            "/usr/bin/xz", "--version"], capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0 and r.stdout.startswith("xz (XZ Utils)"), r.stderr
    finally:
        b.cleanup()
