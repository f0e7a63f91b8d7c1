"""The start-up fast path: a real broker publishes plan cache files, real
ldpool-exec processes start from them (no broker round trip) and pin their
images with OFD locks on the pool's pin table; eviction skips what a real
process pins. Oracles: native runs of the same programs."""
import fcntl
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import uuid

import posix_ipc

from broker_helpers import BrokerProc, broker, others, wait_for  # noqa: F401  (broker is a fixture)
from launcher_helpers import env  # noqa: F401  (a fixture)
from host_broker import plancache
from host_broker.pool import PIN_OFF

XZ = "/usr/bin/xz"
LZMA = "/lib/x86_64-linux-gnu/liblzma.so.5"


def _env(env, broker, **extra):
    return dict(env, LDPOOL_SOCKET=broker.socket, LDPOOL_TIMING="1", **extra)


def _path(stderr):
    m = re.search(rb"ldpool-exec: timing \(us\):.* path=(\w+)", stderr)
    assert m, stderr.decode(errors="replace")
    return m.group(1).decode()


def pooled(argv, env, **kw):
    """(result, path taken): path is fast, slow (or file)."""
    r = subprocess.run(["ldpool-exec", "--no-fallback", "--", *argv], capture_output=True, env=env,
                       timeout=120, **kw)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r, _path(r.stderr)


def native(argv, env, **kw):
    return subprocess.run(argv, capture_output=True, env=env, timeout=60, **kw)


def plan_files(broker):
    d = plancache.plans_dir(broker.socket)
    return sorted(n for n in os.listdir(d) if not n.startswith(".")) if os.path.isdir(d) else []


def test_second_start_takes_the_fast_path(broker, env):
    e = _env(env, broker)
    want = native([XZ, "--version"], e).stdout
    r, path = pooled(["xz", "--version"], e)
    assert (path, r.stdout) == ("slow", want)
    assert len(plan_files(broker)) == 1
    for _ in range(3):
        r, path = pooled(["xz", "--version"], e)
        assert (path, r.stdout) == ("fast", want)
        assert r.stderr.count(b"\n") == 1          # the timing line only: no notice
    # the broker counts a fast-path process while it runs (its request was
    # sent without waiting for the answer)
    data = os.urandom(2000) * 10
    packed = native([XZ, "-c"], e, input=data).stdout
    pooled(["xz", "-dc"], e, input=packed)         # first start of this request: slow
    p = subprocess.Popen(["ldpool-exec", "--no-fallback", "xz", "-dc"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    try:
        def held():
            st = broker.stats()
            mine = [c for c in others(st) if c["name"] == "xz" and c["pid"] == p.pid]
            lzma = [im["refs"] for im in st["images"] if os.path.basename(im["path"]).startswith("liblzma")]
            return mine and mine[0]["leases"] == 1 and lzma and lzma[0] >= 1
        wait_for(held, what="the broker to count the fast-path client")
        out, err = p.communicate(packed, timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert (p.returncode, out, _path(err)) == (0, data, "fast")
    wait_for(lambda: broker.stats()["totals"]["leases"] == 0, what="the lease to go with the process")
    assert broker.stats()["totals"]["consistent"]


def test_fast_door(broker, env):
    """Fast-path clients announce themselves at <socket>.fast (accepted by a
    SCHED_BATCH thread); without it (an older broker) at the socket itself."""
    import stat
    door = broker.socket + ".fast"
    e = _env(env, broker)
    want = native([XZ, "-c"], e, input=b"door").stdout
    for without_door in (False, True):
        if without_door:
            broker.kill(signal.SIGTERM)                # the stopping broker removes both sockets
            assert not os.path.exists(broker.socket) and not os.path.exists(door)
            broker.start()
            os.unlink(door)
        else:
            st = os.stat(door)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        pooled(["xz", "-c"], e, input=b"door")
        p = subprocess.Popen(["ldpool-exec", "--no-fallback", "xz", "-c"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
        try:
            wait_for(lambda: [c for c in others(broker.stats()) if c["pid"] == p.pid and c["leases"] == 1],
                     what="the broker to count the client")
            out, err = p.communicate(b"door", timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        assert (p.returncode, out, _path(err)) == (0, want, "fast")


def test_replaced_program_is_not_run_with_the_stale_plan(broker, env, tmp_path):
    e = _env(env, broker, LDPOOL_DEBUG="1")
    prog = tmp_path / "prog"
    shutil.copy(XZ, prog)
    want = native([str(prog), "--version"], e).stdout
    assert [pooled([str(prog), "--version"], e)[1] for _ in range(2)] == ["slow", "fast"]
    # another program under the same name (new inode)
    tmp = tmp_path / "prog.new"
    shutil.copy("/usr/bin/gzip", tmp)
    os.replace(tmp, prog)
    gz = native([str(prog), "--version"], e).stdout
    assert gz != want
    r, path = pooled([str(prog), "--version"], e)
    assert (path, r.stdout) == ("slow", gz)
    assert b"changed since the plan was made" in r.stderr
    # rewritten in place (same inode, new size and mtime)
    with open(prog, "r+b") as f, open(XZ, "rb") as src:
        f.write(src.read())
        f.truncate()
    r, path = pooled([str(prog), "--version"], e)
    assert (path, r.stdout) == ("slow", want)
    # the broker published the new plan: fast again
    r, path = pooled([str(prog), "--version"], e)
    assert (path, r.stdout) == ("fast", want)


def test_replaced_library_falls_back_before_anything_runs(broker, env, tmp_path):
    """A library replaced by a copy (same bytes, new inode and mtime): the
    file identity check of the mapping refuses the cached plan; nothing of
    it stays mapped, so the broker's plan takes over."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(os.path.realpath(LZMA), lib / "liblzma.so.5")
    e = _env(env, broker, LD_LIBRARY_PATH=str(lib), LDPOOL_DEBUG="1")
    want = native([XZ, "--version"], e).stdout
    assert [pooled(["xz", "--version"], e)[1] for _ in range(2)] == ["slow", "fast"]
    shutil.copy(os.path.realpath(LZMA), lib / "liblzma.so.5.new")
    os.utime(lib / "liblzma.so.5.new", ns=(1, 10**18))
    os.replace(lib / "liblzma.so.5.new", lib / "liblzma.so.5")
    r, path = pooled(["xz", "--version"], e)
    assert (path, r.stdout) == ("slow", want)
    assert b"library changed on disk" in r.stderr
    assert pooled(["xz", "--version"], e)[1] == "fast"


def test_text_in_pool_plans_check_library_files_too(env, tmp_path):
    """With --text-in-pool no page comes from the library file, so mapping
    never looks at it: the fast path compares the file with the plan."""
    b = BrokerProc(tmp_path / "b", extra=["--text-in-pool"]).start()
    try:
        lib = tmp_path / "lib"
        lib.mkdir()
        shutil.copy(os.path.realpath(LZMA), lib / "liblzma.so.5")
        e = _env(env, b, LD_LIBRARY_PATH=str(lib), LDPOOL_DEBUG="1")
        want = native([XZ, "--version"], e).stdout
        assert [pooled(["xz", "--version"], e)[1] for _ in range(2)] == ["slow", "fast"]
        shutil.copy(os.path.realpath(LZMA), lib / "liblzma.so.5.new")
        os.replace(lib / "liblzma.so.5.new", lib / "liblzma.so.5")
        r, path = pooled(["xz", "--version"], e)
        assert (path, r.stdout) == ("slow", want)
        assert b"liblzma.so.5 changed since the plan was made" in r.stderr
    finally:
        b.cleanup()


def test_evicted_image_sends_the_launcher_the_slow_way(env, tmp_path):
    b = BrokerProc(tmp_path / "b", linger=0).start()
    try:
        e = _env(env, b)
        want = native([XZ, "--version"], e).stdout
        assert [pooled(["xz", "--version"], e)[1] for _ in range(2)] == ["slow", "fast"]
        wait_for(lambda: not b.stats()["images"], what="eviction (linger 0)")
        assert len(plan_files(b)) == 1                 # the file stays; its stamps are stale
        r, path = pooled(["xz", "--version"], {**e, "LDPOOL_DEBUG": "1"})
        assert (path, r.stdout) == ("slow", want)
        assert b"evicted" in r.stderr
    finally:
        b.cleanup()


def test_corrupted_plan_file_is_ignored(broker, env):
    e = _env(env, broker)
    want = native([XZ, "--version"], e).stdout
    assert [pooled(["xz", "--version"], e)[1] for _ in range(2)] == ["slow", "fast"]
    (name,) = plan_files(broker)
    f = os.path.join(plancache.plans_dir(broker.socket), name)
    data = open(f, "rb").read()
    hdr = plancache.HDR.unpack_from(data)
    off_payload = hdr[12]
    bad = {"truncated": data[:60], "garbage": os.urandom(len(data)),
           "payload": data[:off_payload] + bytes([data[off_payload] ^ 1]) + data[off_payload + 1:],
           "plan": data[:hdr[14]] + bytes(len(data) - hdr[14])}
    for what, content in bad.items():
        with open(f, "wb") as out:
            out.write(content)
        r, path = pooled(["xz", "--version"], e)
        assert (what, path, r.stdout) == (what, "slow", want)


def test_restart_keeps_plan_files_and_a_new_epoch_wipes_them(broker, env):
    e = _env(env, broker)
    want = native([XZ, "--version"], e).stdout
    assert [pooled(["xz", "--version"], e)[1] for _ in range(2)] == ["slow", "fast"]
    broker.kill(signal.SIGTERM)
    broker.start()                                     # re-attaches: same epoch, same stamps
    r, path = pooled(["xz", "--version"], e)
    assert (path, r.stdout) == ("fast", want)
    broker.kill(signal.SIGTERM)
    os.unlink(broker.journal)                          # nothing to re-attach to: a new epoch
    broker.start()
    assert plan_files(broker) == []
    assert pooled(["xz", "--version"], e)[1] == "slow"


def test_dlopen_on_the_fast_path_goes_through_the_broker(broker, env, tmp_path):
    """The lease comes with the reply read lazily at the first dlopen."""
    (tmp_path / "plug.c").write_text("int plug(int x) { return x * 3; }\n")
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #include <dlfcn.h>
        #include <stdio.h>
        int main(int argc, char **argv) {
            void *h = dlopen(argv[1], RTLD_NOW);
            if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
            printf("plug(14) = %d\\n", ((int (*)(int))dlsym(h, "plug"))(14));
            return 0;
        }
    """))
    subprocess.run(["gcc", "-fPIC", "-shared", "-o", "libplug.so", "plug.c"], check=True, cwd=tmp_path)
    subprocess.run(["gcc", "-o", "main", "main.c"], check=True, cwd=tmp_path)
    e = _env(env, broker, LDPOOL_DEBUG="1")
    argv = [str(tmp_path / "main"), str(tmp_path / "libplug.so")]
    paths = []
    for _ in range(3):
        r, path = pooled(argv, e)
        assert r.stdout == b"plug(14) = 42\n"
        assert b"ld.so" not in r.stderr                 # nothing went to ld.so
        paths.append(path)
    assert paths == ["slow", "fast", "fast"]
    t = broker.stats()["totals"]
    assert t["dlopen_built"] + t["dlopen_cached"] == 3 and t["consistent"]


def test_fork_then_dlopen_in_both_processes(broker, env, tmp_path):
    """The fast path's replies are pending on the connection parent and
    child share: they are read before fork(), so that neither waits for
    replies the other consumed."""
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #include <dlfcn.h>
        #include <stdio.h>
        #include <unistd.h>
        #include <sys/wait.h>
        int main(int argc, char **argv) {
            pid_t pid = fork();
            if (pid == 0) {
                printf("child %s\\n", dlopen(argv[1], RTLD_NOW) ? "ok" : dlerror());
                return 0;
            }
            waitpid(pid, NULL, 0);
            printf("parent %s\\n", dlopen(argv[2], RTLD_NOW) ? "ok" : dlerror());
            return 0;
        }
    """))
    subprocess.run(["gcc", "-o", "main", "main.c"], check=True, cwd=tmp_path)
    e = _env(env, broker)
    argv = [str(tmp_path / "main"), "libz.so.1", "libbz2.so.1.0"]
    for want in ("slow", "fast"):
        r = subprocess.run(["ldpool-exec", "--no-fallback", *argv], capture_output=True, env=e, timeout=60)
        assert (r.returncode, r.stdout, _path(r.stderr)) == (0, b"child ok\nparent ok\n", want)
        assert b"ld.so" not in r.stderr


def test_pinned_image_is_not_evicted(tmp_path):
    """The broker's eviction path against a real pool, with the pin held by
    a real child process (an OFD read lock through its own open)."""
    from host_broker.images import open_object
    from host_broker.state import BrokerState
    name = f"/ldpool-test-{uuid.uuid4().hex[:12]}"
    st = BrokerState(name, 64 << 20, str(tmp_path / "j.journal"), linger=0, log=lambda m: None)
    child = None
    try:
        st.store.place(open_object("/lib/x86_64-linux-gnu/libz.so.1"))
        st.flush()
        (key,) = st.store.images
        slot, stamp = st.pins.stamp(key)
        assert stamp != 0
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, struct, sys
            fd = os.open("/dev/shm{name}", os.O_RDONLY)
            fcntl.fcntl(fd, 37, struct.pack("hhxxxxqqi4x", fcntl.F_RDLCK, 0, {PIN_OFF + 8 * slot}, 8, 0))
            print("pinned", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "pinned\n"
        assert st.pins.pinned(key)
        assert st.sweep(linger=0) == [] and key in st.store.images
        assert st.pins.stamp(key) == (slot, stamp)
        child.communicate("", timeout=30)              # its exit drops the lock
        assert [r.key for r in st.sweep(linger=0)] == [key]
        assert struct.unpack_from("<Q", st.pool.mm, PIN_OFF + 8 * slot)[0] == 0
        assert st.pins.stamp(key) is None
    finally:
        if child and child.poll() is None:
            child.kill()
        st.close()
        posix_ipc.unlink_shared_memory(name)


def test_pins_survive_a_broker_restart(tmp_path):
    """Slots are journaled and stamps live in the pool: a re-attached broker
    knows them; a new image never reuses a slot in use."""
    from host_broker.images import open_object
    from host_broker.state import BrokerState
    name = f"/ldpool-test-{uuid.uuid4().hex[:12]}"
    journal = str(tmp_path / "j.journal")
    st = BrokerState(name, 64 << 20, journal, linger=60, log=lambda m: None)
    try:
        st.store.place(open_object("/lib/x86_64-linux-gnu/libz.so.1"))
        st.flush()
        before = {k: st.pins.stamp(k) for k in st.store.images}
        st.close()
        st = BrokerState(name, 64 << 20, journal, linger=60, log=lambda m: None)
        assert st.recovered and {k: st.pins.stamp(k) for k in st.store.images} == before
        st.store.place(open_object("/lib/x86_64-linux-gnu/libbz2.so.1.0"))
        st.flush()
        slots = [st.pins.stamp(k)[0] for k in st.store.images]
        assert len(set(slots)) == len(slots) == len(before) + 1
    finally:
        st.close()
        posix_ipc.unlink_shared_memory(name)


def test_plan_cache_directory_is_bounded(tmp_path, monkeypatch):
    """The directory may be a small tmpfs: the least recently written files
    go first (real broker state, pool and plans; the bound made small)."""
    from host_broker.acquire import Acquirer
    from host_broker.state import BrokerState
    from loader import protocol as P
    monkeypatch.setattr(plancache, "FILES_MAX", 2)
    name = f"/ldpool-test-{uuid.uuid4().hex[:12]}"
    st = BrokerState(name, 256 << 20, str(tmp_path / "j.journal"), linger=60, log=lambda m: None)
    try:
        acq = Acquirer(st.store, log=lambda m: None)
        plans = plancache.PlanCache(str(tmp_path / "s.plans"), st, log=lambda m: None)
        names = []
        for prog in ("/usr/bin/xz", "/usr/bin/gzip", "/usr/bin/zstd"):
            payload = P.encode_kv([("path", prog), ("argv0", prog), ("cwd", "/")])
            a = acq.program(P.Request.decode(payload), payload)
            st.flush()
            plans.publish(payload, a)
            plans.publish(payload, a)                  # once per acquisition
            names.append(plancache.file_name(payload))
        assert sorted(os.listdir(tmp_path / "s.plans")) == sorted(names[1:])
        data = open(tmp_path / "s.plans" / names[2], "rb").read()
        hdr = plancache.HDR.unpack_from(data)
        assert (hdr[0], hdr[3], hdr[9]) == (plancache.MAGIC, st.epoch, len(a.keys))
        assert data[hdr[14]:hdr[14] + hdr[15]] == a.plan
    finally:
        st.close()
        posix_ipc.unlink_shared_memory(name)
