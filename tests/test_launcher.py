"""ldpool-exec runs real programs: byte-identical stdout and the same exit
status as a native run of the same command.  Everything is real: the
system's programs and libraries, a real broker on a Unix socket (started on
demand by the launcher itself), the real POSIX shm pool."""
import os
import shutil
import subprocess
import textwrap

import pytest

from launcher_helpers import env, need, same  # noqa: F401  (env is a fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    blob = b"".join(b"line %d: the quick brown fox %x\n" % (i, i * 2654435761 % 2**32) for i in range(20000))
    (d / "blob.txt").write_bytes(blob)
    return d


def test_hello_c(env, tmp_path):
    src = tmp_path / "hello.c"
    src.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include <string.h>
        #include <errno.h>
        #include <unistd.h>
        __thread int counter = 40;
        extern char *program_invocation_short_name;
        int main(int argc, char **argv) {
            counter += argc;
            errno = 0;
            printf("hello %s %d argc=%d name=%s\\n", argc > 1 ? argv[1] : "-", counter, argc,
                   program_invocation_short_name);
            return 3;
        }
    """))
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "hello"), str(src)], check=True)
    r = same([str(tmp_path / "hello"), "world"], env)
    assert r.stdout == b"hello world 42 argc=2 name=hello\n"


def test_exit_by_signal(env, tmp_path):
    src = tmp_path / "abrt.c"
    src.write_text("#include <stdlib.h>\nint main(void){ abort(); }\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "abrt"), str(src)], check=True)
    r = same([str(tmp_path / "abrt")], env)
    assert r.returncode == -6


def test_xz_round_trip(env, data):
    need("xz")
    blob = (data / "blob.txt").read_bytes()
    c = same(["xz", "-c", "-6", str(data / "blob.txt")], env)
    d = same(["xz", "-dc"], env, input=c.stdout)
    assert d.stdout == blob
    same(["xz", "--version"], env)
    same(["xz", "-t"], env, input=b"not xz data")     # an error exit status, same as native


def test_zstd_round_trip(env, data):
    need("zstd")
    c = same(["zstd", "-q", "-c", "-5", str(data / "blob.txt")], env)
    d = same(["zstd", "-q", "-dc"], env, input=c.stdout)
    assert d.stdout == (data / "blob.txt").read_bytes()


def test_sqlite3_queries(env, tmp_path):
    need("sqlite3")
    db = tmp_path / "t.db"
    sql = ("create table t(a integer, b text); "
           "with recursive n(i) as (select 1 union all select i+1 from n where i < 500) "
           "insert into t select i, printf('row%04d', i) from n; "
           "select count(*), sum(a), min(b), max(b) from t; "
           "select group_concat(b, ',') from (select b from t where a % 97 = 0 order by a);")
    subprocess.run(["sqlite3", str(db), "select 1;"], check=True, capture_output=True)
    r = same(["sqlite3", ":memory:", sql], env)
    assert r.stdout.startswith(b"500|125250|row0001|row0500\n")


def test_python3_extension_modules(env):
    py = "/usr/bin/python3"
    code = textwrap.dedent("""
        import ssl, sqlite3, ctypes, decimal, threading, hashlib, json
        print(ssl.OPENSSL_VERSION_NUMBER > 0, ssl.create_default_context().protocol)
        c = sqlite3.connect(':memory:'); c.execute('create table t(x)')
        c.executemany('insert into t values (?)', [(i,) for i in range(100)])
        print(c.execute('select sum(x) from t').fetchone())
        libc = ctypes.CDLL(None); print(libc.strlen(b'hello ldpool'))
        decimal.getcontext().prec = 30; print(decimal.Decimal(1) / decimal.Decimal(7))
        out = []
        ts = [threading.Thread(target=lambda i=i: out.append(hashlib.sha256(str(i).encode()).hexdigest()[:8]))
              for i in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print(sorted(out)); print(json.dumps({'a': [1, 2]}))
    """)
    same([py, "-c", code], env)


def test_perl_xs_modules(env):
    need("perl")
    same(["perl", "-MList::Util=sum,max,first", "-MPOSIX=floor,strftime", "-MData::Dumper", "-e",
          'print sum(1..100), " ", max(3,9,2), " ", floor(7.9), " ", strftime("%Y", gmtime(0)), "\\n";'
          '$Data::Dumper::Sortkeys=1; print Dumper({a=>1,b=>[2,3]});'], env)


def test_git(env, tmp_path):
    need("git")
    same(["git", "--version"], env)
    same(["git", "hash-object", "--stdin"], env, input=b"ldpool\n" * 1000)
    subprocess.run(["git", "init", "-q", str(tmp_path / "r")], check=True)
    (tmp_path / "r" / "f.txt").write_text("hello\n")
    same(["git", "-C", str(tmp_path / "r"), "status", "--porcelain"], env)


def test_curl_file_url(env, data):
    need("curl")
    same(["curl", "-s", f"file://{data}/blob.txt"], env)
    same(["curl", "-s", f"file://{data}/does-not-exist"], env)


def test_openssl_dgst(env, data):
    need("openssl")
    same(["openssl", "dgst", "-sha256", str(data / "blob.txt")], env)
    same(["openssl", "dgst", "-sha3-512", str(data / "blob.txt")], env)


def test_cmake_script(env, tmp_path):
    cmake = "/usr/bin/cmake" if os.path.exists("/usr/bin/cmake") else need("cmake")
    s = tmp_path / "s.cmake"
    s.write_text('string(SHA256 h "ldpool")\nmath(EXPR x "6*7")\nlist(APPEND l c b a)\nlist(SORT l)\n'
                 'execute_process(COMMAND echo hi OUTPUT_VARIABLE o)\n'
                 'file(WRITE ${CMAKE_CURRENT_LIST_DIR}/o.txt "${h} ${x} ${l} ${o}")\n')
    same([cmake, "-P", str(s)], env)
    assert (tmp_path / "o.txt").read_text().split()[1:3] == ["42", "a;b;c"]


def test_gdb_batch(env):
    need("gdb")
    same(["gdb", "-nx", "-batch", "-ex", "print 6*7", "-ex", "print sizeof(long)"], env)


def test_qemu_img(env, tmp_path):
    need("qemu-img")
    img = tmp_path / "x.qcow2"
    r = same(["qemu-img", "create", "-f", "qcow2", str(img), "4M"], env)
    assert img.exists()
    same(["qemu-img", "check", str(img)], env)


def test_llc_and_filecheck(env, tmp_path):
    need("llc-14")
    fc = shutil.which("FileCheck-14") or "/usr/lib/llvm-14/bin/FileCheck"
    ll = tmp_path / "t.ll"
    ll.write_text("define i32 @add(i32 %a, i32 %b) {\n  %c = add i32 %a, %b\n  ret i32 %c\n}\n")
    r = same(["llc-14", "-O2", "-o", "-", str(ll)], env)
    chk = tmp_path / "chk.txt"
    chk.write_text("CHECK: add:\nCHECK: ret\n")
    same([fc, str(chk)], env, input=r.stdout)
    chk.write_text("CHECK: nothing-like-this\n")
    same([fc, str(chk)], env, input=r.stdout)      # a failing check: same non-zero status


def test_vim_ex_mode(env, tmp_path):
    need("vim")
    f = tmp_path / "v.txt"
    f.write_text("alpha\nbeta\ngamma\n")
    same(["vim", "-Nu", "NONE", "-i", "NONE", "-es", "+%s/a/A/g", "+%print", "+q!", str(f)], env)


def test_jq(env):
    need("jq")
    same(["jq", "-c", "{x: (.a + 1), k: (keys)}"], env, input=b'{"a": 41, "b": [1,2]}')
