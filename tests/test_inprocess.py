"""loader.open: real system libraries (and a C++ library built here) mapped
into this Python process from pool images, compared with the normal path
(Python's own zlib/hashlib/sqlite3, which ld.so loaded)."""
import ctypes
import hashlib
import os
import sqlite3
import subprocess
import threading
import zlib

import pytest

import loader
from loader.errors import LdpoolError, ResolveError


def mappings_of(path):
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return [line for line in f if line.split()[-1:] == [real]]


def test_libz_crc32_and_compress2():
    z = loader.open("libz.so.1", "local")
    try:
        z.crc32.restype = ctypes.c_ulong
        z.crc32.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_uint]
        data = os.urandom(5000) + b"abc" * 10000
        assert z.crc32(0, data, len(data)) == zlib.crc32(data)
        z.compress2.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_ulong), ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_int]
        out = ctypes.create_string_buffer(len(data) + 1000)
        n = ctypes.c_ulong(len(out))
        assert z.compress2(out, ctypes.byref(n), data, len(data), 9) == 0
        assert zlib.decompress(out.raw[:n.value]) == data
        assert out.raw[:n.value] == zlib.compress(data, 9)
        # our copy, not ld.so's: the address is in no file mapping of libz
        assert z.symbol_address("crc32") != ctypes.cast(ctypes.CDLL("libz.so.1").crc32, ctypes.c_void_p).value
        with pytest.raises(AttributeError, match="undefined symbol: no_such_function"):
            z.no_such_function
    finally:
        z.close()


def test_libsqlite3_query():
    with loader.open("libsqlite3.so.0", "local") as s:
        db = ctypes.c_void_p()
        assert s.sqlite3_open(b":memory:", ctypes.byref(db)) == 0
        rows = []
        CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                              ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p))

        def cb(_, n, vals, _names):
            rows.append(tuple(vals[i].decode() for i in range(n)))
            return 0
        sql = (b"create table t(a, b); insert into t values (1, 'x'), (2, 'y'), (3, 'z');"
               b"select a * 10, upper(b), sqlite_version() from t where a > 1 order by a desc;")
        s.sqlite3_exec.argtypes = [ctypes.c_void_p, ctypes.c_char_p, CB, ctypes.c_void_p, ctypes.c_void_p]
        assert s.sqlite3_exec(db, sql, CB(cb), None, None) == 0
        assert s.sqlite3_close(db) == 0
    con = sqlite3.connect(":memory:")
    version = con.execute("select sqlite_version()").fetchone()[0]
    assert rows == [("30", "Z", version), ("20", "Y", version)]


def test_libcrypto_sha256():
    with loader.open("libcrypto.so.3", "local") as c:
        c.SHA256.restype = ctypes.c_void_p
        c.SHA256.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
        for data in (b"", b"abc", os.urandom(100_000)):
            out = ctypes.create_string_buffer(32)
            c.SHA256(data, len(data), out)
            assert out.raw == hashlib.sha256(data).digest()
        # the EVP path runs libcrypto's initialisers and its IFUNC-free CPU dispatch
        c.EVP_MD_fetch.restype = c.EVP_MD_CTX_new.restype = ctypes.c_void_p
        c.EVP_MD_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        md = c.EVP_MD_fetch(None, b"SHA3-256", None)
        assert md
        c.EVP_Digest.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p]
        out = ctypes.create_string_buffer(32)
        assert c.EVP_Digest(b"abc", 3, out, None, ctypes.c_void_p(md), None) == 1
        assert out.raw == hashlib.sha3_256(b"abc").digest()


CXX = r"""
#include <stdexcept>
#include <string>
#include <vector>
static std::string greeting = "static ctor ran";
extern "C" int thrower(int x) {
    try {
        if (x > 0) throw std::runtime_error("boom " + std::to_string(x));
        return -1;
    } catch (const std::exception &e) {
        return (int)std::string(e.what()).size() + x;
    }
}
extern "C" int nested(int depth) {
    std::vector<int> v(depth);
    try { if (depth == 0) throw 42; return nested(depth - 1) + 1; }
    catch (int k) { return k; }
}
extern "C" int ctor_ok(void) { return greeting == "static ctor ran"; }
thread_local int tl = 7;
extern "C" int tls_bump(void) { return ++tl; }
"""


def test_cxx_exceptions_statics_and_tls(tmp_path):
    (tmp_path / "cx.cpp").write_text(CXX)
    lib = tmp_path / "libcx.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-o", lib, tmp_path / "cx.cpp"], check=True)
    x = loader.open(str(lib), "local")
    try:
        assert x.ctor_ok() == 1
        assert x.thrower(3) == len("boom 3") + 3
        assert x.thrower(0) == -1
        assert x.nested(5) == 47          # thrown 5 frames deep, caught, unwound
        assert [x.tls_bump(), x.tls_bump()] == [8, 9]
        seen = []
        threads = [threading.Thread(target=lambda: seen.append((x.tls_bump(), x.thrower(12)))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == [(8, len("boom 12") + 12)] * 4     # a fresh TLS block per thread
        assert x.tls_bump() == 10
        # code runs from the file's pages (page cache, as under ld.so), mapped
        # private read-only at the pool placement, not through the ELF model
        text = [m for m in mappings_of(lib) if "x" in m.split()[1]]
        assert text and all(m.split()[1] == "r-xp" for m in text)
    finally:
        x.close()
    with pytest.raises(LdpoolError, match="closed"):
        x.thrower(1)


def test_errors_are_one_liners(tmp_path):
    with pytest.raises(ResolveError, match="libnot-there.so.9"):
        loader.open("libnot-there.so.9", "local")
    bad = tmp_path / "libbad.so"
    bad.write_bytes(b"not an elf file at all")
    with pytest.raises(LdpoolError, match="libbad.so: .*short"):
        loader.open(str(bad), "local")
    bad.write_bytes(open("/lib/x86_64-linux-gnu/libz.so.1", "rb").read()[:200])
    with pytest.raises(LdpoolError, match="libbad.so"):
        loader.open(str(bad), "local")


def test_from_the_brokers_pool(tmp_path, monkeypatch):
    """With a broker answering, images come from its shared pool and the
    connection holds a lease until the handle is closed."""
    from loader import client, inprocess
    sock = tmp_path / "broker.sock"
    monkeypatch.setenv("LDPOOL_SOCKET", str(sock))
    client.connect(str(sock), start_embedded=True).close()
    old = inprocess._state.pop("conn", None)
    try:
        z = loader.open("libz.so.1")
        assert z._lease is not None
        z.crc32.restype = ctypes.c_ulong
        data = os.urandom(3000)
        assert z.crc32(0, data, len(data)) == zlib.crc32(data)
        addr = z.symbol_address("crc32")
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
        line = next(x for x in maps if int(x.split("-")[0], 16) <= addr < int(x.split()[0].split("-")[1], 16))
        # text from the library file (page cache, as ld.so), the relocated
        # pages (GOT) from the broker's pool
        assert line.split()[1] == "r-xp" and os.path.samefile(line.split()[-1], "/lib/x86_64-linux-gnu/libz.so.1")
        start = int(line.split("-")[0], 16)
        near = [x for x in maps if 0 <= int(x.split("-")[0], 16) - start < 1 << 24]
        assert any("/dev/shm/ldpool-" in x for x in near)
        conn = inprocess._state["conn"]
        leases = [c["leases"] for c in conn.stats()["clients"] if c["name"] == "loader.open"]
        assert leases and leases[0] >= 1
        z.close()
        leases = [c["leases"] for c in conn.stats()["clients"] if c["name"] == "loader.open"]
        assert leases == [0]
        # a library needing static TLS fails cleanly: one line, nothing left mapped
        (tmp_path / "ie.c").write_text('__attribute__((tls_model("initial-exec"))) __thread int v = 3;\n'
                                      "int get(void) { return v; }\n")
        subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / "libie.so", tmp_path / "ie.c"], check=True)
        before = open("/proc/self/maps").read().count("/dev/shm/ldpool-")
        with pytest.raises(LdpoolError, match="static TLS"):
            loader.open(str(tmp_path / "libie.so"))
        assert open("/proc/self/maps").read().count("/dev/shm/ldpool-") == before
        leases = [c["leases"] for c in conn.stats()["clients"] if c["name"] == "loader.open"]
        assert leases == [0]                # the failed open's lease was given back
        with pytest.raises(LdpoolError, match="static TLS"):
            loader.open(str(tmp_path / "libie.so"), "local")
    finally:
        c = inprocess._state.pop("conn", None)
        if c is not None:
            c.close()
        if old is not None:
            inprocess._state["conn"] = old
        from broker_helpers import stop_and_unlink
        stop_and_unlink(str(sock))

