"""ld.so's search primitives (glibc 2.36 elf/dl-load.c): dynamic string
tokens, search-path lists, and the per-candidate check open_verify() makes.

`FileCache` remembers directory listings, header checks and ElfFile maps,
so one process can resolve hundreds of programs: a candidate whose name is
not in its directory's listing costs a set lookup, not an open().
"""
import os
import stat
import struct

from loader.elf import ElfFile, ELFCLASS64, EM_X86_64, ET_DYN, ET_EXEC
from loader.errors import ElfError
from loader import hwcaps as _hwcaps

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
ELFOSABI_SYSV, ELFOSABI_GNU = 0, 3
LIBC_ABI_MAX = 2  # glibc 2.36 x86-64: ABI versions 0 and 1 (unique symbols)

# verify() outcomes
OK, SKIP, FATAL = 0, 1, 2


class FileCache:
    """Directory listings, header checks and open ELF files.  Every answer
    is checked against a stat() of the directory or file (inode, mtime,
    size), so a library rebuilt or a file added since is seen; what is
    saved is the listing, the open/read and the ELF parse."""

    def __init__(self):
        self._dirs = {}
        self._verdict = {}
        self._elf = {}

    def listdir(self, path):
        """Names in directory `path` (absolute), or None if it is not one."""
        path = path or "/"
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        hit = self._dirs.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            names = frozenset(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else None
        except OSError:
            names = None
        self._dirs[path] = (stamp, names)
        return names

    def exists_in_dir(self, path):
        d, _, base = path.rpartition("/")
        names = self.listdir(d if d else ("/" if path.startswith("/") else "."))
        return names is not None and base in names

    def verify(self, path):
        """open_verify(): (OK, ElfFile) to use it, (SKIP, reason) to go on
        searching (missing, unreadable, other class or machine), or
        (FATAL, message) for a file ld.so stops at."""
        try:
            st = os.stat(path)
            stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        hit = self._verdict.get(path)
        if hit is not None and hit[0] == stamp and stamp is not None:
            return hit[1]
        v = self._verify(path, stamp)
        self._verdict[path] = (stamp, v)
        return v

    def _verify(self, path, stamp):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            return (SKIP, os.strerror(e.errno))
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return (FATAL, "cannot read file data: Is a directory")
            head = os.pread(fd, 64, 0)
        except OSError as e:
            return (FATAL, f"cannot read file data: {os.strerror(e.errno)}")
        finally:
            os.close(fd)
        problem = header_problem(head)
        if problem is not None:
            return problem
        key = stamp or (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        elf = self._elf.get(key)
        if elf is None:
            try:
                elf = ElfFile(path)
            except ElfError as e:
                return (FATAL, e.problem)
            self._elf[key] = elf
        return (OK, elf)

    def elf(self, path):
        """ElfFile of `path` through the cache; ElfError when unusable."""
        v, x = self.verify(path)
        if v == OK:
            return x
        # the main program goes through ElfFile itself for its precise message
        return ElfFile(path)


def header_problem(head):
    """None when the 64-byte ELF header passes open_verify's checks; else
    (SKIP, why) or (FATAL, glibc's message)."""
    if len(head) < _EHDR.size:
        return (FATAL, "file too short")
    ident = head[:16]
    if ident[:4] != b"\x7fELF":
        return (FATAL, "invalid ELF header")
    if ident[4] != ELFCLASS64:
        return (SKIP, "wrong ELF class")
    if ident[5] != 1:
        return (FATAL, "ELF file data encoding not little-endian")
    if ident[6] != 1:
        return (FATAL, "ELF file version ident does not match current one")
    if ident[7] not in (ELFOSABI_SYSV, ELFOSABI_GNU):
        return (FATAL, "ELF file OS ABI invalid")
    if not (ident[8] == 0 or (ident[7] == ELFOSABI_GNU and ident[8] < LIBC_ABI_MAX)):
        return (FATAL, "ELF file ABI version invalid")
    if any(ident[9:16]):
        return (FATAL, "nonzero padding in e_ident")
    _, e_type, e_machine, e_version = _EHDR.unpack_from(head, 0)[:4]
    if e_version != 1:
        return (FATAL, "ELF file version does not match current one")
    if e_machine != EM_X86_64:
        return (SKIP, "wrong machine")
    if e_type not in (ET_DYN, ET_EXEC):
        return (FATAL, "only ET_DYN and ET_EXEC can be loaded")
    if _EHDR.unpack_from(head, 0)[9] != 56:
        return (FATAL, "ELF file's phentsize not the expected size")
    return None


# ---------------------------------------------------------------- DSTs
_IDENT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
DST_NAMES = ("ORIGIN", "PLATFORM", "LIB")


def is_dst(s, i, ref):
    """Length of DST `ref` at s[i:] (just after '$'), braces included; 0 if none."""
    curly = i < len(s) and s[i] == "{"
    j = i + curly
    if not s.startswith(ref, j):
        return 0
    nxt = s[j + len(ref)] if j + len(ref) < len(s) else ""
    if curly and nxt != "}":
        return 0
    if nxt in _IDENT and nxt:
        return 0
    return len(ref) + 2 if curly else len(ref)


def dst_count(s):
    n = 0
    i = s.find("$")
    while i >= 0:
        ln = 0
        for ref in DST_NAMES:
            ln = is_dst(s, i + 1, ref)
            if ln:
                n += 1
                break
        i = s.find("$", i + 1 + ln)
    return n


def dst_substitute(s, origin, platform, secure=False, is_main=False):
    """_dl_dst_substitute(): `s` with $ORIGIN/$PLATFORM/$LIB replaced, or ""
    when a known token has no value (unknown origin; $ORIGIN not leading
    in a secure program; a secure main program's path outside the trusted
    directories)."""
    out = []
    i, n = 0, len(s)
    check_trusted = False
    while i < n:
        c = s[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        i += 1
        repl, ln = None, is_dst(s, i, "ORIGIN")
        if ln:
            if secure and not (i == 1 and (i + ln == n or s[i + ln] == "/")):
                repl = False
            else:
                repl = origin if origin is not None else False
            check_trusted = secure and is_main
        elif is_dst(s, i, "PLATFORM"):
            ln = is_dst(s, i, "PLATFORM")
            repl = platform if platform is not None else False
        elif is_dst(s, i, "LIB"):
            ln = is_dst(s, i, "LIB")
            repl = _hwcaps.DST_LIB
        if repl:
            out.append(repl)
            i += ln
        elif ln:
            return ""
        else:
            out.append("$")
    result = "".join(out)
    if check_trusted and not is_trusted_path(result):
        return ""
    return result


def is_trusted_path(path):
    """is_trusted_path_normalize(): `path`, with /./ and /../ folded, lies in
    a system directory."""
    if not path:
        return False
    parts = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    norm = "/" + "/".join(parts) + ("/" if parts else "")
    return any(norm.startswith(d) for d in _hwcaps.SYSTEM_DIRS)


def split_search_path(text, seps, expand):
    """fillin_rpath(): split on any of `seps`, expand DSTs with `expand`,
    drop elements that expand to nothing, normalise to one trailing '/'
    ("" stays "": the current directory), drop repeats."""
    out = []
    pieces = [text]
    for sep in seps:
        pieces = [q for p in pieces for q in p.split(sep)]
    for p in pieces:
        if p:
            p = expand(p) if dst_count(p) else p
            if not p:
                continue
            p = p.rstrip("/") or "/"
            if not p.endswith("/"):
                p += "/"
        if p not in out:
            out.append(p)
    return out


def origin_of(path, cwd):
    """l_origin as _dl_new_object computes it: the directory part of the
    name the object was opened by, made absolute with cwd but not
    otherwise normalised (no symlink resolution)."""
    if not path:
        return None
    full = path if path.startswith("/") else (cwd.rstrip("/") + "/" + path)
    d = full[:full.rfind("/")]
    return d or "/"
