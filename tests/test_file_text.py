"""Text from the library file, relocated pages from the pool: a running
client maps a library's text from the file (page cache, as under ld.so) and
its RELRO from the pool; the broker's pool holds only the pages relocation
changes; a library replaced on disk after planning is one clear error;
`--text-in-pool` keeps whole images and maps nothing from files."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from broker_helpers import BrokerProc, broker  # noqa: F401  (broker is a fixture)
from loader import planformat as pf
from loader.elf import ElfFile, PT_GNU_RELRO

LIB_C = r"""
#include <stdio.h>
const char *greeting(void) { return "hello from the pool"; }
static const char *table[] = { "a", "b", "c" };   /* relocated pointers: RELRO */
const char *pick(int i) { return table[i % 3]; }
"""
PROG_C = r"""
#include <stdio.h>
#include <unistd.h>
const char *greeting(void);
const char *pick(int);
int main(int argc, char **argv) {
    printf("%s %s\n", greeting(), pick(1));
    fflush(stdout);
    if (argc > 1) { char c; read(0, &c, 1); }     /* stay alive for /proc/PID/maps */
    return 0;
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("filetext")
    (d / "lib.c").write_text(LIB_C)
    (d / "prog.c").write_text(PROG_C)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-Wl,-z,relro,-z,now", "-o", d / "libft.so", d / "lib.c"],
                   check=True)
    subprocess.run(["cc", "-O1", "-o", d / "prog", d / "prog.c", f"-L{d}", "-lft", f"-Wl,-rpath,{d}"],
                   check=True)
    return d


def _maps(pid):
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], int(parts[2], 16), parts[5].strip() if len(parts) > 5 else ""))
    return out


def _at(maps, addr):
    return next(m for m in maps if m[0] <= addr < m[1])


def test_text_from_the_file_relro_from_the_pool(built, broker):
    lib = str(built / "libft.so")
    env = dict(os.environ, LDPOOL_SOCKET=broker.socket)
    p = subprocess.Popen(["ldpool-exec", "--no-fallback", "--", str(built / "prog"), "wait"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert p.stdout.readline() == b"hello from the pool b\n"
        maps = _maps(p.pid)
        st = os.stat(lib)
        mine = [m for m in maps if m[4] == lib]
        assert mine, f"{lib} is not mapped from its file"
        text = [m for m in mine if "x" in m[2]]
        assert text and all(m[2] == "r-xp" for m in text)
        # the object's first page (offset 0, vaddr 0) gives the load bias
        base = next(m[0] for m in mine if m[3] == 0)
        with ElfFile(lib) as elf:
            relro = elf.segment(PT_GNU_RELRO)
            assert relro is not None
            relro_page = base + (relro.vaddr & ~4095)
            text_seg = next(s for s in elf.loads if s.flags & 1)
            text_page = base + (text_seg.vaddr & ~4095)
        m = _at(maps, text_page)
        assert m[4] == lib and m[3] == text_seg.offset & ~4095
        m = _at(maps, relro_page)
        assert m[4].startswith("/dev/shm/" + broker.pool.strip("/")), m
        assert m[2] == "r--p" or m[2] == "r--s"
        assert st.st_ino == os.stat(_at(maps, text_page)[4]).st_ino
    finally:
        p.communicate(b"x", timeout=30)
    assert p.returncode == 0


def _pool_rss_kb(pid, pool):
    rss, name = 0, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) > 5 else ""
            elif line.startswith("Rss:") and name == "/dev/shm/" + pool.strip("/"):
                rss += int(line.split()[1])
    return rss


def _file_mapped(pid, path):
    """Whether the broker maps `path` as its ELF reader does (read-only,
    shared: Python's mmap), not as a library it runs itself."""
    with open(f"/proc/{pid}/maps") as f:
        return any(line.split()[1] == "r--s" and line.rstrip().endswith(" " + path) for line in f)


def test_pool_holds_only_relocated_pages(built, tmp_path):
    """The pool of a file-text broker is sparse: it holds far less than the
    images' size, and the broker keeps no library file mapped; with
    --text-in-pool the same program maps nothing from files and the pool
    holds the text."""
    sizes = {}
    for extra in ((), ("--text-in-pool",)):
        b = BrokerProc(tmp_path / ("t" if extra else "f"), extra=extra).start()
        try:
            env = dict(os.environ, LDPOOL_SOCKET=b.socket)
            r = subprocess.run(["ldpool-exec", "--no-fallback", "--", "/usr/bin/xz", "--version"],
                               capture_output=True, env=env, timeout=60)
            assert r.returncode == 0 and b"liblzma" in r.stdout, r.stderr
            # having built the images, the broker maps no library file any more
            assert not _file_mapped(b.proc.pid, "/usr/lib/x86_64-linux-gnu/liblzma.so.5.4.1")
            with b.connect() as c:
                plan = pf.unpack(c.acquire_program("/usr/bin/xz"))
                sparse = {im["path"]: im["sparse"] for im in c.stats()["images"]}
            files = [s for s in plan.segments if s[4] == pf.SEG_FILE]
            assert bool(files) == (not extra)
            assert set(sparse.values()) == {not extra}
            sizes[extra] = _pool_rss_kb(b.proc.pid, b.pool)
        finally:
            b.cleanup()
    # liblzma's and xz's text alone are ~200 KiB
    assert sizes[()] * 3 < sizes[("--text-in-pool",)], sizes


def test_replaced_library_is_one_line_error(built, tmp_path):
    """A plan made for a file and run after the file was replaced: the
    launcher notices (device, inode, size, mtime) and says so in one line."""
    d = tmp_path / "copy"
    shutil.copytree(built, d)
    prog, lib = d / "prog", d / "libft.so"
    subprocess.run(["cc", "-O1", "-o", prog, built / "prog.c", f"-L{d}", "-lft", f"-Wl,-rpath,{d}"], check=True)
    plan, pool = tmp_path / "plan", f"/dev/shm/ldpool-ft-{os.getpid()}"
    try:
        subprocess.run([sys.executable, "-P", "-m", "loader.plan", str(prog), "-o", str(plan), "--pool-file", pool],
                       check=True, capture_output=True, timeout=120)
        cmd = ["ldpool-exec", "--plan", str(plan), "--pool", pool, str(prog)]
        ok = subprocess.run(cmd, capture_output=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout == b"hello from the pool b\n", ok.stderr
        # same bytes, new inode (what a package upgrade does)
        shutil.copy2(lib, str(lib) + ".new")
        os.rename(str(lib) + ".new", lib)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 127
        assert r.stderr == f"ldpool-exec: {lib}: library changed on disk since it was pooled\n"
        assert r.stdout == ""
        # ...and the plan of the new file runs again
        subprocess.run([sys.executable, "-P", "-m", "loader.plan", str(prog), "-o", str(plan), "--pool-file", pool],
                       check=True, capture_output=True, timeout=120)
        assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
        # modified in place (same inode, new mtime)
        time.sleep(0.01)
        os.utime(lib)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 127 and r.stderr.count("\n") == 1 and "changed on disk" in r.stderr
    finally:
        if os.path.exists(pool):
            os.unlink(pool)


def test_broker_replans_a_replaced_library(built, broker, tmp_path):
    """Through the broker, a library replaced between two starts gets a
    fresh plan (its identity is re-checked), so the program still runs."""
    d = tmp_path / "copy"
    shutil.copytree(built, d)
    prog, lib = d / "prog", d / "libft.so"
    subprocess.run(["cc", "-O1", "-o", prog, built / "prog.c", f"-L{d}", "-lft", f"-Wl,-rpath,{d}"], check=True)
    env = dict(os.environ, LDPOOL_SOCKET=broker.socket)
    cmd = ["ldpool-exec", "--no-fallback", "--", str(prog)]
    assert subprocess.run(cmd, capture_output=True, env=env, timeout=60).stdout == b"hello from the pool b\n"
    shutil.copy2(lib, str(lib) + ".new")
    os.rename(str(lib) + ".new", lib)
    time.sleep(0.1)                                  # the broker re-checks files every 50 ms
    r = subprocess.run(cmd, capture_output=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout == b"hello from the pool b\n", r.stderr


def test_plan_file_segments_hold_the_images_bytes(tmp_path):
    """Every SEG_FILE page of a plan reads, from the file, exactly what the
    (whole) pre-relocated image holds there."""
    from loader.localpool import LocalPool
    from loader import resolve, plan as lplan
    with LocalPool() as pool:
        res = resolve.resolve_program("/usr/bin/python3", env={})
        p = pf.unpack(lplan.build_plan(res, pool))
        placed = lplan.placements(res.objects, pool)
        by_start = {pl.map_start: pl for pl in placed.values()}
        nfile = 0
        for o in p.objects:
            pl = by_start[o["map_start"]]
            view = pool.image_bytes(pl)
            image = bytes(view)
            view.release()
            with open(p.string(o["path"]), "rb") as f:
                data = f.read()
            for addr, n, off, prot, kind in p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]:
                if kind != pf.SEG_FILE:
                    continue
                at = addr - o["map_start"]
                want = bytes(image[at:at + n])
                got = data[off:off + n]
                assert got + bytes(len(want) - len(got)) == want, (p.string(o["path"]), hex(addr))
                nfile += n // 4096
        assert nfile > 1000
