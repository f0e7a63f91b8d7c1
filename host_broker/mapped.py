"""Which parts of the pool running processes still map, from /proc/*/maps.

After a broker restart, a process started under the previous broker may
hold mappings of an image without holding a lease (it did not reclaim its
leases). Punching such an image out of the pool would turn its text into
zero pages, so the broker evicts an image left from a previous broker only
when every process's maps could be read and none maps any of its bytes."""
import os


def _boot_time():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1])
    return 0


def _started(pid, boot, hz):
    """Wall-clock start time of a process (its stat is always readable)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return boot + int(fields[19]) / hz


def pool_mappings(pool_path, since=None):
    """(list of (offset, length) of pool mappings, complete): complete is
    False when the maps of a process that may have mapped the pool could not
    be read (another user's process, or no ptrace rights in a container); a
    process started before `since` (the pool's creation) cannot have. A
    guest is never visible here."""
    boot, hz = _boot_time(), os.sysconf("SC_CLK_TCK")
    ranges, complete = [], True
    target = pool_path.encode()
    me = str(os.getpid())                 # the broker maps all of it, writable
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue                      # exited meanwhile
        except OSError:
            try:
                if since is not None and _started(pid, boot, hz) < since - 1:
                    continue
            except (OSError, ValueError, IndexError):
                pass
            complete = False
            continue
        if target not in data:
            continue
        for line in data.splitlines():
            if target not in line:
                continue
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith(target):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split(b"-"))
            ranges.append((int(parts[2], 16), hi - lo))
    return ranges, complete


def overlaps(ranges, off, size):
    return any(o < off + size and off < o + n for o, n in ranges)
