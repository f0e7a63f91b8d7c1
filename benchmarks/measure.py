"""Measuring primitives shared by every suite: memory of real processes from
/proc/PID/smaps (per mapping, per object, per process), wall time of real
runs paired A B A B, and the TSC rate that ld.so's LD_DEBUG=statistics
counts in.  Nothing here knows about ldpool: the suites decide what A and B
are."""
import ctypes
import mmap
import os
import re
import statistics
import struct
import tempfile
import time

from . import relocmem

# smaps fields we keep, in kB as the kernel prints them
FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean",
          "Private_Dirty", "Anonymous", "Swap")

# glibc's family stays with ld.so under ldpool (docs/architecture.md), so it
# is not "pooled" memory on either side of a comparison
_GLIBC_FAMILY = re.compile(
    r"/(ld-linux-x86-64\.so\.2|lib(c|m|pthread|dl|rt|resolv|mvec|util|anl|"
    r"BrokenLocale|nss_[a-z0-9_]+|thread_db|memusage|SegFault|c_malloc_debug)"
    r"(-[0-9.]+)?\.so[0-9.]*)$")


def is_glibc_family(path):
    return bool(_GLIBC_FAMILY.search(path))


class Mapping:
    __slots__ = ("start", "end", "perms", "offset", "path") + FIELDS

    def __init__(self, start, end, perms, offset, path):
        self.start, self.end, self.perms, self.offset, self.path = start, end, perms, offset, path
        for f in FIELDS:
            setattr(self, f, 0)

    @property
    def uss(self):
        return self.Private_Clean + self.Private_Dirty


def read_smaps(pid):
    """Every mapping of a live process with its smaps counters (kB)."""
    maps = []
    cur = None
    with open(f"/proc/{pid}/smaps", "rb") as f:
        data = f.read().decode("utf-8", "replace")
    for line in data.splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):
            parts = line.split(None, 5)
            lo, hi = parts[0].split("-")
            path = parts[5].strip() if len(parts) > 5 else ""
            if path.endswith(" (deleted)"):
                path = path[:-10]
            cur = Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), path)
            maps.append(cur)
        elif cur is not None and head[:-1] in FIELDS:
            setattr(cur, head[:-1], int(rest.split()[0]))
    return maps


_elf_cache = {}


def _is_elf(path):
    if path not in _elf_cache:
        try:
            with open(path, "rb") as f:
                _elf_cache[path] = f.read(4) == b"\x7fELF"
        except OSError:
            _elf_cache[path] = False
    return _elf_cache[path]


_real_cache = {}


def _real(path):
    if path not in _real_cache:
        _real_cache[path] = os.path.realpath(path) if path.startswith("/") else path
    return _real_cache[path]


_bss_cache = {}


def bss_bytes(path):
    """Size of the anonymous zero-fill tail ld.so maps after an object's
    last PT_LOAD: page_up(vaddr + memsz) - page_up(vaddr + filesz)."""
    if path not in _bss_cache:
        size = 0
        try:
            with open(path, "rb") as f:
                eh = f.read(64)
                phoff, = struct.unpack_from("<Q", eh, 32)
                phentsize, phnum = struct.unpack_from("<HH", eh, 54)
                f.seek(phoff)
                ph = f.read(phentsize * phnum)
            loads = [struct.unpack_from("<IIQQQQQQ", ph, i * phentsize) for i in range(phnum)]
            loads = [p for p in loads if p[0] == 1]
            if loads:
                _, _, _, vaddr, _, filesz, memsz, _ = max(loads, key=lambda p: p[3])
                up = lambda x: (x + 4095) & ~4095  # noqa: E731
                size = max(0, up(vaddr + memsz) - up(vaddr + filesz))
        except (OSError, struct.error):
            pass
        _bss_cache[path] = size
    return _bss_cache[path]


def attribute(maps, ranges=(), pool_paths=()):
    """Group mappings by the object they belong to.

    `ranges` are (start, end, label) placements of pooled images (from the
    broker's `ldpool pool --json`): any mapping inside one belongs to it,
    whatever backs it (pool file, private copy-on-write, anonymous .bss or
    slot pages).  Otherwise a file mapping belongs to its file, and an
    anonymous mapping right after an object's last mapping is that object's
    .bss, as ld.so lays it out -- up to the .bss size its program headers
    give: the kernel merges the .bss with an adjacent anonymous mapping of
    the same protection (a malloc arena, say), and then only that share of
    the merged mapping's counters is charged to the object.  Returns {label: {"kind", field: kB...,
    "USS", "anon_USS"}} where kind is "object" (program, pooled library,
    launcher or pool), "glibc" or "other"; objects also get
    "reloc_Private_Dirty" and "reloc_straddling" (relocmem.py)."""
    # one label per file whoever names it (/lib vs /usr/lib, symlinks)
    ranges = sorted((lo, hi, _real(name)) for lo, hi, name in ranges)
    pool_paths = set(pool_paths)
    out = {}
    owned = {}  # object label -> its whole mappings, for relocmem
    prev_label, prev_end = None, None
    bss_left = {}  # label -> bytes of .bss still unaccounted for
    for m in maps:
        label = kind = None
        share = 1.0
        for lo, hi, name in ranges:
            if lo <= m.start < hi:
                label, kind = name, "object"
                break
        anon = not m.path
        if label is None:
            if m.path in pool_paths or m.path.startswith("/dev/shm/ldpool"):
                label, kind = "pool:" + os.path.basename(m.path), "object"
            elif m.path.startswith("/") and _is_elf(m.path):
                label = _real(m.path)
                kind = "glibc" if is_glibc_family(m.path) else "object"
            elif anon and prev_label is not None and m.start == prev_end and bss_left.get(prev_label, 0) > 0:
                label = prev_label
                kind = out[label]["kind"]
                share = min(1.0, bss_left[label] / (m.end - m.start))
                bss_left[label] -= m.end - m.start
                if share < 1.0:
                    _add(out, "[anon]", "other", m, 1.0 - share, True)
            else:
                label, kind = (m.path or "[anon]"), "other"
        _add(out, label, kind, m, share, anon)
        if kind == "object" and share == 1.0:
            owned.setdefault(label, []).append(m)
        if not anon and kind != "other" and m.path and label == _real(m.path) and label not in bss_left:
            bss_left[label] = bss_bytes(m.path)
        if kind == "object" or kind == "glibc":
            prev_label, prev_end = label, m.end
        else:
            prev_label = prev_end = None
    placements = {}
    for lo, hi, name in ranges:
        placements.setdefault(name, (lo, hi))
    for label, ms in owned.items():
        r = relocmem.relocation_private(label, ms, placements.get(label))
        if r is not None:
            out[label]["reloc_Private_Dirty"] = r[0]
            out[label]["reloc_straddling"] = len(r[1])
    return out


def _add(out, label, kind, m, share, anon):
    e = out.get(label)
    if e is None:
        e = out[label] = dict(kind=kind, USS=0, anon_USS=0, anon_Private_Dirty=0,
                             reloc_Private_Dirty=0, reloc_straddling=0, **{f: 0 for f in FIELDS})
    for f in FIELDS:
        e[f] += getattr(m, f) * share
    e["USS"] += m.uss * share
    if anon:
        e["anon_USS"] += m.uss * share
        e["anon_Private_Dirty"] += m.Private_Dirty * share


def summarize(objects):
    """Per-process totals: everything, pooled-eligible objects (with and,
    as "objects_file", without their anonymous .bss; as "objects_reloc",
    only their pages a loader alone writes), glibc."""
    tot = {"all": {}, "objects": {}, "objects_file": {}, "objects_reloc": {}, "glibc": {}}
    for f in FIELDS + ("USS",):
        tot["all"][f] = sum(e[f] for e in objects.values())
        tot["objects"][f] = sum(e[f] for e in objects.values() if e["kind"] == "object")
        tot["glibc"][f] = sum(e[f] for e in objects.values() if e["kind"] == "glibc")
    for f in ("USS", "Private_Dirty"):
        tot["objects_file"][f] = tot["objects"][f] - sum(
            e["anon_" + f] for e in objects.values() if e["kind"] == "object")
    for f in ("Private_Dirty", "straddling"):
        tot["objects_reloc"][f] = sum(e["reloc_" + f] for e in objects.values() if e["kind"] == "object")
    return tot


def process_memory(pid, ranges=(), pool_paths=()):
    objs = attribute(read_smaps(pid), ranges, pool_paths)
    return objs, summarize(objs)


def mean_memory(pids, ranges=(), pool_paths=()):
    """Mean per-process figures over a group of identical clients, and the
    mean per object (kB)."""
    per_obj, totals = {}, []
    for pid in pids:
        objs, tot = process_memory(pid, ranges, pool_paths)
        totals.append(tot)
        for label, e in objs.items():
            acc = per_obj.setdefault(label, {"kind": e["kind"]})
            for f in ("Rss", "Pss", "USS", "Private_Dirty", "Shared_Clean", "Shared_Dirty",
                      "anon_USS", "anon_Private_Dirty", "reloc_Private_Dirty", "reloc_straddling"):
                acc[f] = acc.get(f, 0) + e[f]
    n = max(len(pids), 1)
    for acc in per_obj.values():
        for f in acc:
            if f != "kind":
                acc[f] = round(acc[f] / n, 1)
    mean = {}
    for group in ("all", "objects", "objects_file", "objects_reloc", "glibc"):
        mean[group] = {f: round(sum(t[group][f] for t in totals) / n, 1) for f in totals[0][group]} if totals else {}
    return mean, per_obj


def has_mapping(pid, predicate):
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(predicate(line.split(None, 5)[-1].strip()) for line in f if len(line.split()) > 5)
    except OSError:
        return False


def waiting_on_read(pid):
    """True once the process sleeps in a read of its stdin pipe: the client
    has started and is idle."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            w = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state == "S" and "pipe_read" in w


# ---------------------------------------------------------------- timing

def time_run(argv, env=None, stdin_path="/dev/null", capture_stderr=False, cwd=None):
    """Wall time of one real run (posix_spawn to waitpid), its exit status
    and, optionally, its stderr.  stdout goes to /dev/null."""
    actions = [(os.POSIX_SPAWN_OPEN, 0, stdin_path, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
    errf = None
    if capture_stderr:
        errf = tempfile.TemporaryFile()
        actions.append((os.POSIX_SPAWN_DUP2, errf.fileno(), 2))
    else:
        actions.append((os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0))
    env = os.environ if env is None else env
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        dt = (time.perf_counter_ns() - t0) / 1e9
    finally:
        if cwd:
            os.chdir(old)
    err = ""
    if errf is not None:
        errf.seek(0)
        err = errf.read().decode("utf-8", "replace")
        errf.close()
    return dt, os.waitstatus_to_exitcode(status), err


def paired(a_argv, b_argv, n, a_env=None, b_env=None, warmup=1, b_stderr=False, between=None):
    """Run A and B alternately (A B A B ...) so that drift in the machine's
    state hits both equally; the figure is the median of the per-pair
    ratios B/A.  `between(i)` runs untimed before each B (e.g. to make the
    pool cold again)."""
    for _ in range(warmup):
        time_run(a_argv, a_env)
        time_run(b_argv, b_env)
    a, b, ratios, errs, codes = [], [], [], [], set()
    for i in range(n):
        ta, ca, _ = time_run(a_argv, a_env)
        if between:
            between(i)
        tb, cb, eb = time_run(b_argv, b_env, capture_stderr=b_stderr)
        a.append(ta)
        b.append(tb)
        ratios.append(tb / ta)
        codes.add((ca, cb))
        if b_stderr:
            errs.append(eb)
    return {
        "n": n, "a_s": a, "b_s": b,
        "a_median_s": statistics.median(a), "b_median_s": statistics.median(b),
        "ratio_median": statistics.median(ratios),
        "ratio_of_medians": statistics.median(b) / statistics.median(a),
        "exit_codes": sorted(codes), "b_stderr": errs,
    }


_TIMING = re.compile(r"ldpool-exec: timing(?: \(us\):)? (.*)")


def parse_launcher_timing(stderr):
    """The launcher's own breakdown (LDPOOL_TIMING=1): one stderr line
    `ldpool-exec: timing (us): broker=120 map=30 ...` (or `timing
    connect=12us ...`) -> {"broker": 120.0, ...} in microseconds, or None
    if the line is absent."""
    m = None
    for m in _TIMING.finditer(stderr or ""):
        pass
    if m is None:
        return None
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)(?:\s*us)?", m.group(1))}


def median_breakdown(stderrs):
    parsed = [p for p in map(parse_launcher_timing, stderrs) if p]
    if not parsed:
        return None
    keys = sorted(set().union(*parsed), key=lambda k: list(parsed[0]).index(k) if k in parsed[0] else 99)
    return {k: statistics.median([p[k] for p in parsed if k in p]) for k in keys}


# ---------------------------------------------------------------- TSC

_tsc_hz = None


def tsc_hz():
    """Rate of the time-stamp counter that ld.so's statistics count in:
    rdtsc read from a tiny executable page, calibrated against the
    monotonic clock over 0.2 s (the TSC is constant on this machine class)."""
    global _tsc_hz
    if _tsc_hz is None:
        code = bytes.fromhex("0f31" "48c1e220" "4809d0" "c3")  # rdtsc; shl rdx,32; or rax,rdx; ret
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(code)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)
        t0, c0 = time.perf_counter_ns(), rdtsc()
        time.sleep(0.2)
        t1, c1 = time.perf_counter_ns(), rdtsc()
        _tsc_hz = (c1 - c0) / ((t1 - t0) / 1e9)
        del rdtsc
    return _tsc_hz


def ldso_statistics(stderr):
    """Parse LD_DEBUG=statistics output (first block: start-up)."""
    out = {}
    pats = {"startup_cycles": r"total startup time in dynamic loader: (\d+) cycles",
            "reloc_cycles": r"time needed for relocation: (\d+) cycles",
            "relocations": r"number of relocations: (\d+)",
            "relocations_from_cache": r"number of relocations from cache: (\d+)",
            "relative_relocations": r"number of relative relocations: (\d+)"}
    for k, p in pats.items():
        m = re.search(p, stderr)
        if m:
            out[k] = int(m.group(1))
    return out


def machine_description():
    def first(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None
    u = os.uname()
    return {"kernel": u.release, "machine": u.machine, "cpu": first("/proc/cpuinfo", "model name"),
            "cpus": os.cpu_count(), "mem_total": first("/proc/meminfo", "MemTotal"),
            "os": _os_release(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _os_release():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None
