"""Big real programs doing real work through ldpool-exec, compared with
native runs (stdout, exit status or signal, and stderr where deterministic):
a JVM, node, gpg with its agent, tcl, ssh tools, tmux's server, valgrind and
strace over pooled programs, a bash script, venv, man/groff, an LTO link
whose linker plugin is dlopen'ed.  Also what a process shows of its own
command line (/proc/PID/cmdline: ps, pgrep -f, node's process.title), once
seen to name the launcher.  A program that is not installed is skipped."""
import os
import shlex
import shutil
import subprocess

import pytest

from launcher_helpers import env, run, same  # noqa: F401  (env is a fixture)

HERE = os.path.dirname(__file__)


def have(*progs):
    for p in progs:
        if shutil.which(p) is None:
            pytest.skip(f"{p} is not installed")


def cmdline(argv, env, pooled):
    r = run(argv, env, pooled)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_cmdline_is_the_programs(env):
    # the launcher's words ("ldpool-exec --no-fallback --") are gone from the
    # kernel's view; where they were, NULs are left (as a title setter leaves)
    argv = ["cat", "/proc/self/cmdline"]
    nat = cmdline(argv, env, False)
    got = cmdline(argv, env, True)
    assert got.rstrip(b"\0") == nat.rstrip(b"\0")
    # ldpool run execs the launcher with the program's own argv: exactly
    got = subprocess.run(["ldpool", "run", "--", *argv], capture_output=True, env=env).stdout
    assert got == nat
    # ps and pgrep -f read it too
    sh = ["sh", "-c", "ps -o args= -p $$; echo $0 \"$@\"", "arg0", "a b", "c"]
    assert cmdline(sh, env, True) == cmdline(sh, env, False)


NODE = r"""
const fs=require('fs'),zlib=require('zlib'),crypto=require('crypto'),cp=require('child_process'),
      http=require('http'),dns=require('dns');
const {Worker,isMainThread,parentPort}=require('worker_threads');
if(!isMainThread){let s=0;for(let i=0;i<1e5;i++)s+=i%7;parentPort.postMessage(s);return;}
if(process.argv[2]==='child'){process.send({ok:true});process.exit(0);}
(async()=>{
console.log('execPath',process.execPath);
process.title='renamed-node';
console.log('cmdline',fs.readFileSync('/proc/self/cmdline','latin1').split('\0')[0]);
console.log('comm',fs.readFileSync('/proc/self/comm','latin1').trim());
fs.writeFileSync('x.txt','hello '.repeat(1000));
console.log('gunzip',zlib.gunzipSync(zlib.gzipSync(fs.readFileSync('x.txt'))).length);
console.log('sha',crypto.createHash('sha256').update('abc').digest('hex'));
const k=crypto.generateKeyPairSync('ec',{namedCurve:'P-256'});
console.log('verify',crypto.verify('sha256',Buffer.from('m'),k.publicKey,crypto.sign('sha256',Buffer.from('m'),k.privateKey)));
console.log('cp',cp.execFileSync('sh',['-c','echo $((6*7))']).toString().trim());
console.log('workers',await Promise.all([1,2,3].map(()=>new Promise(r=>new Worker(__filename).on('message',r)))));
console.log('dns',(await dns.promises.lookup('localhost')).address);
await new Promise(r=>{const c=cp.fork(__filename,['child']);c.on('message',m=>console.log('fork',m.ok));c.on('exit',r);});
console.log('spawn',cp.spawnSync(process.execPath,['-e','process.exit(9)']).status);
const srv=http.createServer((q,s)=>s.end('pong '+q.url)).listen(0,'127.0.0.1',()=>{
 http.get('http://127.0.0.1:'+srv.address().port+'/abc',res=>{let d='';res.on('data',c=>d+=c);
  res.on('end',()=>{console.log('http',d);srv.close();process.kill(process.pid,'SIGTERM');});});});
})();
"""


def test_node(env, tmp_path):
    have("node")
    (tmp_path / "w.js").write_text(NODE)
    r = same(["node", "w.js"], env, cwd=tmp_path, stderr_too=True)
    assert b"cmdline renamed-n\n" in r.stdout and b"http pong /abc" in r.stdout, r.stdout
    assert r.returncode == -15


JAVA = """
import java.util.*; import java.util.concurrent.*; import java.util.zip.*; import java.security.*;
public class Big { public static void main(String[] a) throws Exception {
  ExecutorService ex = Executors.newFixedThreadPool(4); List<Future<Long>> fs = new ArrayList<>();
  for (int t = 0; t < 4; t++) fs.add(ex.submit(() -> { long s = 0;
      for (int i = 0; i < 200000; i++) { List<Integer> l = new ArrayList<>(); l.add(i); s += l.get(0) % 3; }
      return s; }));
  long tot = 0; for (Future<Long> f : fs) tot += f.get(); ex.shutdown(); System.gc();
  System.out.println("sum " + tot);
  CRC32 c = new CRC32(); c.update("hello".getBytes()); System.out.println("crc " + c.getValue());
  System.out.println("sha " + HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest("abc".getBytes())));
  try { Object o = null; o.hashCode(); } catch (NullPointerException e) { System.out.println("npe"); }
  try { down(0); } catch (StackOverflowError e) { System.out.println("soe"); }
  System.exit(3);
} static int down(int n) { return down(n + 1) + 1; } }
"""


def test_java(env, tmp_path):
    # the JVM dlopens libjvm and friends, traps SIGSEGV for null checks and
    # stack banging, and reads /proc/self/maps for its thread stacks
    have("java", "javac")
    (tmp_path / "Big.java").write_text(JAVA)
    same(["javac", "-d", "out", "Big.java"], env, cwd=tmp_path)
    r = same(["java", "-Xmx64m", "-cp", "out", "Big"], env, cwd=tmp_path, stderr_too=True)
    assert r.returncode == 3 and b"soe" in r.stdout
    same(["java", "-XshowSettings:properties", "-version"], env, cwd=tmp_path, stderr_too=True)


def test_gpg_with_agent(env, tmp_path):
    have("gpg", "gpgconf")
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    e = dict(env, GNUPGHOME=str(home))
    (tmp_path / "m.txt").write_text("hello gpg\n")
    g = ["gpg", "--batch", "--yes", "--passphrase", "pw", "--pinentry-mode", "loopback"]
    try:
        r = run(g + ["--quick-gen-key", "T <t@example.org>", "ed25519", "sign,cert", "never"], e, True)
        assert r.returncode == 0, r.stderr
        for argv in (g + ["-o", "m.sig", "--sign", "m.txt"], g + ["-o", "m.gpg", "-c", "m.txt"]):
            assert run(argv, e, True, cwd=tmp_path).returncode == 0
        same(g + ["--verify", "m.sig"], e, cwd=tmp_path)
        r = same(g + ["-d", "m.gpg"], e, cwd=tmp_path)
        assert r.stdout == b"hello gpg\n"
        same(["gpg", "--batch", "--list-keys", "--with-colons", "--fixed-list-mode"], e)
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=e, capture_output=True)


TCL = r"""
puts [info patchlevel]
set d [zlib compress [string repeat abc 100]]; puts [string length [zlib decompress $d]]
oo::class create C { method hi {} { return "hi from oo" } }; puts [[C new] hi]
puts [catch {package require Tk} e]
puts [exec sh -c "echo sub"]
set f [open "|cat" r+]; puts $f "pipe ok"; flush $f; close $f w; puts [gets $f]; close $f
puts [clock format 0 -gmt 1]
puts [catch {load /nonexistent/libx.so X} e]
puts [encoding convertto utf-8 \u00e9]
exit 5
"""


def test_tclsh(env, tmp_path):
    have("tclsh")
    (tmp_path / "t.tcl").write_text(TCL)
    r = same(["tclsh", "t.tcl"], env, cwd=tmp_path, stderr_too=True)
    assert r.returncode == 5


def test_ssh_tools(env, tmp_path):
    have("ssh", "ssh-keygen")
    r = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c", "-f", "k"], env, True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    same(["ssh-keygen", "-l", "-f", "k.pub"], env, cwd=tmp_path)
    same(["ssh-keygen", "-y", "-f", "k"], env, cwd=tmp_path)
    (tmp_path / "s.txt").write_text("data\n")
    assert run(["ssh-keygen", "-Y", "sign", "-f", "k", "-n", "file", "s.txt"], env, True, cwd=tmp_path).returncode == 0
    (tmp_path / "allowed").write_text("c " + (tmp_path / "k.pub").read_text())
    same(["ssh-keygen", "-Y", "verify", "-f", "allowed", "-I", "c", "-n", "file", "-s", "s.txt.sig"], env,
         input=b"data\n", cwd=tmp_path)
    same(["ssh", "-G", "-o", "User=x", "example.org"], env, stderr_too=True)
    same(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", "-p", "1", "127.0.0.1", "true"], env)


def test_tmux_server(env, tmp_path):
    have("tmux")
    outs = []
    for pooled in (False, True):
        s = str(tmp_path / f"t{int(pooled)}")
        t = ["tmux", "-S", s]
        try:
            assert run(t + ["new-session", "-d", "-s", "a", "-x", "80", "-y", "24", "echo hi; sleep 30"],
                       env, pooled).returncode == 0
            out = [run(t + ["list-sessions", "-F", "#{session_name} #{window_width}"], env, pooled).stdout]
            for _ in range(50):          # the pane's shell prints when it gets to it
                cap = run(t + ["capture-pane", "-p", "-t", "a"], env, pooled).stdout
                if cap.strip():
                    break
                subprocess.run(["sleep", "0.1"])
            out.append(cap.strip())
            out.append(run(t + ["kill-server"], env, pooled).returncode)
        finally:
            subprocess.run(t + ["kill-server"], capture_output=True)
        outs.append(out)
    assert outs[0] == outs[1] == [b"a 80\n", b"hi", 0]


def test_valgrind_and_strace_over_pooled(env):
    have("valgrind", "strace")
    same(["valgrind", "-q", "--error-exitcode=9", "sh", "-c", "exit 3"], env)
    same(["valgrind", "-q", "true"], env, stderr_too=True)
    same(["strace", "-f", "-qq", "-o", "/dev/null", "sh", "-c", "ls / | wc -l"], env)


BASH = r"""
set -e
trap 'echo trapped USR1' USR1
for i in 1 2 3; do echo $i | sha256sum; done
seq 1 1000 | sort -rn | head -3 | tr '\n' ' '; echo
printf 'a\nb\n' | xz | xz -d | wc -l
echo '{"a":[1,2]}' | jq -c .a
/usr/bin/python3 -c 'import sys; print(sys.version_info[:2] > (3,0))'
kill -USR1 $$
(exit 7) || echo "sub rc $?"
sqlite3 :memory: 'select 6*7'
declare -A m=([k]=v); echo ${m[k]}
coproc cat; echo co >&"${COPROC[1]}"; read -r x <&"${COPROC[0]}"; echo "coproc $x"; kill $COPROC_PID
echo done; exit 11
"""


def test_bash_script_running_many_programs(env, tmp_path):
    have("jq", "sqlite3", "xz")
    (tmp_path / "s.sh").write_text(BASH)
    r = same(["bash", "s.sh"], env, cwd=tmp_path, stderr_too=True)
    assert r.returncode == 11 and b"trapped USR1" in r.stdout


def test_venv(env, tmp_path):
    py = "/usr/bin/python3"
    if subprocess.run([py, "-c", "import venv, ensurepip"], capture_output=True).returncode:
        pytest.skip("python3-venv is not installed")
    assert run([py, "-m", "venv", "--without-pip", "v"], env, True, cwd=tmp_path).returncode == 0
    same(["v/bin/python", "-c", "import sys, ssl, sqlite3; print(sys.prefix != sys.base_prefix, sys.executable)"],
         env, cwd=tmp_path, stderr_too=True)


def test_man_and_groff(env, tmp_path):
    have("man", "groff")
    # -Tps stamps its CreationDate: from SOURCE_DATE_EPOCH, not the clock
    e = dict(env, MANWIDTH="80", MAN_DISABLE_SECCOMP="1", SOURCE_DATE_EPOCH="0")
    page = subprocess.run(["zcat", "/usr/share/man/man1/ls.1.gz"], capture_output=True).stdout
    (tmp_path / "ls.1").write_bytes(page)
    # man and groff run pipelines of children: a pooled result that differs
    # must differ from more native runs too (test_sweep saw groff race)
    for argv, e2 in ((["man", "-P", "cat", "ls"], e), (["groff", "-man", "-Tutf8", "ls.1"], e),
                     (["groff", "-man", "-Tps", "ls.1"], e)):
        got = run(argv, e2, True, cwd=tmp_path)
        nats = [run(argv, e2, False, cwd=tmp_path) for _ in range(3)]
        assert any((n.returncode, n.stdout) == (got.returncode, got.stdout) for n in nats), \
            (argv, got.stdout[:300], got.stderr[-500:], nats[0].stdout[:300])


def test_lto_link_with_dlopened_plugin(env, tmp_path):
    # gcc runs ld as a child: run the link line that gcc would, so that the
    # pooled one is ld itself, which dlopens liblto_plugin (and it lto-wrapper)
    have("gcc", "ld")
    (tmp_path / "a.c").write_text("int f(int);\nint main(int c, char **v) { return f(c); }\n")
    (tmp_path / "b.c").write_text("int f(int x) { return x * 3; }\n")
    subprocess.run(["gcc", "-O2", "-flto", "-c", "a.c", "b.c"], cwd=tmp_path, check=True)
    dry = subprocess.run(["gcc", "-O2", "-flto", "-o", "x", "a.o", "b.o", "-###"], cwd=tmp_path,
                         capture_output=True, text=True).stderr.splitlines()
    e = dict(env)
    for line in dry:
        if line.startswith(("COLLECT_GCC=", "COLLECT_LTO_WRAPPER=", "COLLECT_GCC_OPTIONS=")):
            k, v = line.split("=", 1)
            e[k] = v.strip("'") if k != "COLLECT_GCC_OPTIONS" else v
    link = shlex.split(next(ln for ln in dry if "collect2" in ln))
    link[0] = "ld"
    outs = []
    for pooled, out in ((False, "n"), (True, "p")):
        r = run(link + ["-o", out], e, pooled, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outs.append(subprocess.run([f"./{out}", "1", "2"], cwd=tmp_path).returncode)
    assert outs == [9, 9]


def test_binutils_on_a_big_library(env):
    have("objdump", "readelf", "as")
    lib = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0"
    if not os.path.exists(lib):
        pytest.skip("no libsqlite3")
    same(["objdump", "-d", "--no-show-raw-insn", lib], env)
    same(["readelf", "-wi", "/usr/lib/x86_64-linux-gnu/libz.so.1"], env)
    same(["as", "--version"], env)


def _fallback(argv, env):
    return subprocess.run(["ldpool-exec", "--", *argv], capture_output=True, env=env, timeout=120)


def test_fallback_runs_the_program_as_exec_would(env):
    # a fallback was `ld.so --argv0 ... PROG` with the user's LD_PRELOAD set
    # aside: /proc/self/exe named ld.so, and the preload was lost
    e = dict(env, LD_PROFILE="libnothing.so.0", LD_PRELOAD="libz.so.1")
    argv = ["sh", "-c", "readlink /proc/$$/exe; env | grep ^LD_ | sort; grep -c libz /proc/$$/maps"]
    nat = subprocess.run(argv, capture_output=True, env=e)
    got = _fallback(argv, e)
    assert b"note: running sh under ld.so: LD_PROFILE is set" in got.stderr
    assert (got.returncode, got.stdout) == (nat.returncode, nat.stdout)


def test_program_left_to_ldso_names_itself(env):
    # gprofng's tools define cplus_demangle, which libgprofng (a malloc
    # replacement, so loaded by ld.so first) calls: they fall back, and
    # print their name from /proc/self/exe
    have("gp-archive")
    nat = subprocess.run(["gp-archive", "--version"], capture_output=True, env=env)
    got = _fallback(["gp-archive", "--version"], env)
    assert b"which libgprofng.so.0 calls" in got.stderr, got.stderr
    assert (got.returncode, got.stdout) == (nat.returncode, nat.stdout)


def test_dollar_underscore_names_the_program(env):
    # a shell passes the path of what it ran as $_ (bash starts its own $_
    # from it): that was the launcher
    inner = "bash -c 'echo $_'; env | grep '^_='"
    nat = subprocess.run(["bash", "-c", inner], capture_output=True, env=env)
    got = subprocess.run(["bash", "-c", inner.replace("bash -c", "ldpool-exec -- bash -c").replace(
        "env |", "ldpool-exec -- env |")], capture_output=True, env=env)
    assert nat.stdout == b"/usr/bin/bash\n_=/usr/bin/env\n" or b"bin/bash" in nat.stdout
    assert got.stdout == nat.stdout, (got.stdout, nat.stdout)


SELF_EXEC = r"""
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv)
{
    if (argc > 1) {                                   /* a child */
        printf("child %s %s %s\n", argv[0], argv[1], getenv("STEP") ? getenv("STEP") : "-");
        return 0;
    }
    char *v[] = {"spawned", "s", NULL};
    pid_t pid;
    int st;
    if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, v, environ) == 0) waitpid(pid, &st, 0);
    fflush(stdout);
    if (fork() == 0) { execl("/proc/self/exe", "listed", "l", (char *)NULL); _exit(99); }
    wait(&st);
    char *e[] = {"STEP=le", NULL};
    if (fork() == 0) { execle("/proc/self/exe", "listed-env", "e", (char *)NULL, e); _exit(99); }
    wait(&st);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/exe", (int)getpid());
    execv(path, (char *[]){"vectored", "v", NULL});
    return 99;
}
"""


def test_exec_of_proc_self_exe_runs_the_program(env, tmp_path):
    # natively the program again, with the argv[0] its caller chose; the
    # kernel's /proc/self/exe is the launcher, so pooled code's execs of it
    # are given the program's path
    have("gcc")
    (tmp_path / "selfexec.c").write_text(SELF_EXEC)
    subprocess.run(["gcc", "-O", "-o", "selfexec", "selfexec.c"], cwd=tmp_path, check=True)
    r = same(["./selfexec"], env, cwd=tmp_path, stderr_too=True)
    assert r.stdout == b"child spawned s -\nchild listed l -\nchild listed-env e le\nchild vectored v -\n"
    py = "/usr/bin/python3"
    same([py, "-c", "import os; os.execv('/proc/self/exe', ['weird', '-c', 'import sys; print(sys.argv)'])"],
         env, stderr_too=True)
    same([py, "-c", "import subprocess; print(subprocess.run(['/proc/self/exe', '-c', 'print(3)'], "
                    "capture_output=True).stdout)"], env, stderr_too=True)


def test_path_search_passes_a_directory(env, tmp_path):
    # execvp (and a shell) go on past a directory named like the program
    (tmp_path / "bin" / "true").mkdir(parents=True)
    e = dict(env, PATH=f"{tmp_path}/bin:{env['PATH']}")
    r = subprocess.run(["ldpool-exec", "--no-fallback", "--", "true"], capture_output=True, env=e)
    assert (r.returncode, r.stderr) == (0, b"")
