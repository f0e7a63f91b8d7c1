"""`ldpool run [--socket PATH] [--no-fallback] [--] PROG ARGS...`: the
friendly front of ldpool-exec.  It finds PROG as a shell would, says in one
line what is wrong with it, keeps to plain ld.so what cannot be pooled
(with a one-line notice), and otherwise becomes ldpool-exec with the same
argv.  It is a drop-in prefix: it always replaces itself (execv), so exit
statuses, signals, stdin and the process id are the program's own."""
import argparse
import os
import shutil
import stat
import sys

from loader.elf import PT_DYNAMIC, ElfFile
from loader.errors import ElfError, LdpoolError

SHN_UNDEF = 0
STANDARD_INTERP = ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")

# Definitions that replace glibc internals: glibc is already bound to its
# own allocator (and sanitizers hook it before anything runs), so a program
# that defines them itself must be left entirely to ld.so.
INTERPOSED = ("malloc", "free", "calloc", "realloc", "memalign", "posix_memalign", "aligned_alloc",
              "valloc", "pvalloc", "malloc_usable_size")
# Sanitizer runtimes check and report the whole process (the launcher's
# memory and maps too): left to ld.so wherever they are defined.
RUNTIMES = ("__asan_init", "__tsan_init", "__msan_init", "__lsan_init", "__hwasan_init")
# Environment the launcher does not emulate: ld.so's auditing and profiling.
UNSUPPORTED_ENV = ("LD_AUDIT", "LD_PROFILE")


class RunError(LdpoolError):
    exit_code = 127


class Fallback(Exception):
    """The program runs, but under plain ld.so; the message says why."""


def add_arguments(p):
    p.add_argument("--socket", metavar="PATH", help="broker socket (default: $LDPOOL_SOCKET, "
                   "else the per-user socket; the embedded broker starts when none answers)")
    p.add_argument("--no-fallback", action="store_true",
                   help="fail instead of running an unpoolable program under plain ld.so")
    p.add_argument("--explain", action="store_true",
                   help="print the plan PROG would get (from a private pool) instead of running it")
    # not "command": the top-level parser keeps the subcommand's name there
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="PROG ARGS...")


def find_program(prog, path=None):
    """The file a shell would execute for `prog` (execvp's search)."""
    if "/" in prog:
        if not os.path.exists(prog):
            raise RunError(f"{prog}: no such file or directory")
        return prog
    if not prog:
        raise RunError("empty program name")
    for d in (path if path is not None else os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")).split(":"):
        cand = os.path.join(d or ".", prog)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise RunError(f"{prog}: command not found")


def launcher_path():
    """ldpool-exec next to the `ldpool` command or the Python running us,
    else on PATH."""
    dirs = []
    ldpool = shutil.which("ldpool")
    if ldpool:
        dirs.append(os.path.dirname(ldpool))
    dirs.append(os.path.dirname(sys.executable))
    for d in dirs:
        cand = os.path.join(d, "ldpool-exec")
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which("ldpool-exec")
    if found is None:
        raise RunError("ldpool-exec not found next to ldpool or on PATH")
    return found


def check_program(path, env):
    """ElfError / RunError for what cannot run at all, Fallback for what
    runs under plain ld.so; None when the program can be pooled."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise RunError(f"{path}: not a regular file")
    if not os.access(path, os.X_OK):
        raise RunError(f"{path}: permission denied")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"#!":
        return  # the launcher runs its interpreter from the pool, as execve would
    elf = ElfFile(path)
    if elf.interp is None or elf.segment(PT_DYNAMIC) is None:
        raise Fallback("statically linked")
    if elf.interp not in STANDARD_INTERP:
        raise Fallback(f"its interpreter is {elf.interp}")
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        raise Fallback("set-user-ID or set-group-ID program")
    for name in UNSUPPORTED_ENV:
        if env.get(name):
            raise Fallback(f"{name} is set")
    from loader import resolve
    from loader.scope import Scope
    res = resolve.resolve_program(path, env=env, cwd=os.getcwd())
    if res.missing:
        return  # the launcher reports it as ld.so would
    scope = Scope.from_resolution(res)
    for name in INTERPOSED:
        found = scope.lookup(name)
        # only the program's own: a library that defines them is preloaded
        # into the launcher (hosted.c); a non-PIE program's canonical PLT
        # entry (undefined, st_value set) only fixes the function's address
        if (found is not None and found[0] == 0 and not scope.is_glibc(0)
                and scope.elf(0).symbol(found[1]).shndx != SHN_UNDEF):
            raise Fallback(f"{res.objects[0].path} replaces glibc's {name}")
    for name in RUNTIMES:
        found = scope.lookup(name)
        if (found is not None and not scope.is_glibc(found[0])
                and scope.elf(found[0]).symbol(found[1]).shndx != SHN_UNDEF):
            raise Fallback(f"{res.objects[found[0]].path} is a sanitizer runtime")


def run(args):
    cmd = list(args.argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise RunError("no program given (usage: ldpool run [--socket PATH] [--no-fallback] [--] PROG ARGS...)")
    env = dict(os.environ)
    if args.socket:
        env["LDPOOL_SOCKET"] = args.socket
    path = find_program(cmd[0], env.get("PATH"))
    try:
        check_program(path, env)
    except Fallback as why:
        if args.no_fallback:
            raise RunError(f"{path} cannot be run from the pool: {why}") from None
        print(f"ldpool: note: running {cmd[0]} under ld.so: {why}", file=sys.stderr, flush=True)
        _exec(path, cmd, env)
    except ElfError:
        raise
    except OSError as e:
        raise RunError(f"{path}: {e.strerror.lower()}") from None
    if args.explain:
        return explain_program(path, cmd[0], env)
    launcher = launcher_path()
    argv = [launcher] + (["--no-fallback"] if args.no_fallback else []) + ["--"] + cmd
    if not args.no_fallback and cmd[0] and os.path.basename(cmd[0]) != "ldpool-exec":
        # the launcher runs its argv[0] itself (found as execvp would): the
        # program's /proc/PID/cmdline (ps, psutil) then has no trace of it
        argv = cmd
    _exec(launcher, argv, env)


def explain_program(path, argv0, env):
    from loader import resolve
    from loader.localpool import LocalPool
    from loader.plan import build_plan, explain
    res = resolve.resolve_program(path, env=env, cwd=os.getcwd())
    with LocalPool() as pool:
        blob = build_plan(res, pool, argv0=argv0, bind_now=bool(env.get("LD_BIND_NOW")))
    print(explain(blob))
    return 0


def _exec(path, argv, env):
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(path, argv, env)
    except OSError as e:
        raise RunError(f"{argv[0]}: cannot execute: {e.strerror.lower()}") from None
