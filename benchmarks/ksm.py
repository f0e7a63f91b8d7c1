"""KSM, the mechanism ldpool is measured against: reading and setting
/sys/kernel/mm/ksm with a guaranteed restore of the previous settings,
opting a process in with prctl(PR_SET_MEMORY_MERGE), and what KSM costs
(ksmd's CPU time) and achieves (pages merged per process)."""
import ctypes
import json
import os
import signal

SYSFS = "/sys/kernel/mm/ksm"
PR_SET_MEMORY_MERGE = 67
# settings this module may change, restored in this order ("run" last, so
# the scanner only restarts once its old parameters are back)
TUNABLES = ("pages_to_scan", "sleep_millisecs", "max_page_sharing", "use_zero_pages",
            "smart_scan", "advisor_mode", "run")
# a copy of the settings in force before we touched them: a run killed with
# SIGKILL (no finally) gets them restored by the next run
_SAVED = "/tmp/ldpool-bench-ksm-saved.json"

_libc = ctypes.CDLL(None, use_errno=True)


def available():
    return os.path.exists(os.path.join(SYSFS, "run"))


def read(name):
    with open(os.path.join(SYSFS, name)) as f:
        v = f.read().strip()
    if name == "advisor_mode":  # "[none] scan-time": the bracketed one is in force
        return v.split("[", 1)[1].split("]", 1)[0] if "[" in v else v
    return v


def write(name, value):
    with open(os.path.join(SYSFS, name), "w") as f:
        f.write(str(value))


def writable():
    """Whether we may change KSM's settings here (root, and sysfs not
    read-only as in most containers): write a value back unchanged."""
    if not available():
        return False
    try:
        write("sleep_millisecs", read("sleep_millisecs"))
        return True
    except OSError:
        return False


def settings():
    out = {}
    for name in TUNABLES:
        try:
            out[name] = read(name)
        except OSError:
            pass
    return out


def counters():
    out = {}
    for name in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                 "full_scans", "pages_scanned", "general_profit"):
        try:
            out[name] = int(read(name))
        except (OSError, ValueError):
            pass
    return out


def _restore(saved):
    errors = []
    for name in TUNABLES:
        if name in saved:
            try:
                if read(name) != saved[name]:
                    write(name, saved[name])
            except OSError as e:
                errors.append(f"{name}: {e}")
    return errors


def recover_leftover():
    """Restore settings saved by a run that died without cleaning up."""
    try:
        with open(_SAVED) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    _restore(saved)
    os.unlink(_SAVED)
    return True


class Session:
    """`with ksm.Session(run=1, pages_to_scan=100): ...` applies settings and
    always puts the previous ones back: on normal exit, on an exception, on
    SIGINT/SIGTERM/SIGHUP (turned into an exception so that `finally`
    blocks run), and through a saved copy after SIGKILL."""

    def __init__(self, **changes):
        self.changes = changes
        self.saved = None
        self._old_handlers = {}

    def __enter__(self):
        recover_leftover()
        self.saved = settings()
        with open(_SAVED, "w") as f:
            json.dump(self.saved, f)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
            except ValueError:  # not the main thread: rely on finally/SIGKILL copy
                pass
        try:
            for name in TUNABLES:  # same order as restore: run last
                if name in self.changes:
                    write(name, self.changes[name])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        errors = _restore(self.saved)
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        if not errors:
            try:
                os.unlink(_SAVED)
            except OSError:
                pass
        self.restore_errors = errors
        return False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def raise_on_termination():
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt in this process, so
    that every `finally` and context manager of a run gets to clean up."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def merge_this_process():
    """prctl(PR_SET_MEMORY_MERGE, 1): every anonymous and private page of
    this process becomes a KSM candidate.  The flag survives exec on this
    kernel, so it is used as a preexec_fn for ld.so clients."""
    if _libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_MEMORY_MERGE): {os.strerror(e)}")


def process_merge_any(pid):
    """Whether a process is opted in (checks that the prctl took and
    survived exec)."""
    try:
        with open(f"/proc/{pid}/ksm_stat") as f:
            return "ksm_merge_any: yes" in f.read()
    except OSError:
        return False


def process_merging_pages(pid):
    try:
        with open(f"/proc/{pid}/ksm_merging_pages") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def ksmd_pid():
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == "ksmd":
                        return int(d)
            except OSError:
                pass
    return None


def ksmd_cpu_seconds(pid=None):
    """User + system CPU time ksmd has used since boot."""
    pid = pid or ksmd_pid()
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
