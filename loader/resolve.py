"""Which file each needed library is, and in which order ld.so loads them:
glibc 2.36's rules (elf/rtld.c, dl-deps.c, dl-load.c), reproduced exactly.

Load order: the main program, then LD_PRELOAD objects, then DT_NEEDED
breadth first.  A name is first matched against what is already loaded
(the name it was loaded by, its path, its SONAME); otherwise, for a name
without '/', searched in: DT_RPATH of the requesting object and of the
objects that loaded it (only if the requester has no DT_RUNPATH; the main
program's DT_RPATH last), LD_LIBRARY_PATH, the requester's DT_RUNPATH,
/etc/ld.so.cache, the system directories.  Each directory is tried with
the hwcaps subdirectories first.  A file already loaded under another name
(same device and inode) is reused.  Candidates of another ELF class or
machine are skipped; other unusable files stop the search with an error.

Two flavours of "main program": started by the kernel (the default: its
$ORIGIN is the directory of its real path, /proc/self/exe) or by an
explicit `ld.so FILE` (`explicit_loader=True`, what `ld.so --list` and
ldd do: $ORIGIN is the directory of FILE as given, symlinks unresolved).
"""
import os
import time
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

from loader import hwcaps as _hwcaps
from loader import ldcache as _ldcache
from loader import searchpath as sp
from loader.elf import ElfFile
from loader.errors import ResolveError

DF_1_NODEFLIB = 0x800
DF_1_NOOPEN = 0x40
RTLD_PATH = "/lib64/ld-linux-x86-64.so.2"
VDSO_NAME = "linux-vdso.so.1"

# libthread_db.so.1 is not among them: it reads another process's nptl
# through the proc-service functions its user exports (gdb's ps_pdread...),
# which ld.so cannot bind to a pooled program; it can be pooled like any
# library (it touches nothing of its own process's glibc).
GLIBC_SONAMES = frozenset("""ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2
 librt.so.1 libresolv.so.2 libmvec.so.1 libutil.so.1 libanl.so.1 libBrokenLocale.so.1
 libmemusage.so libpcprofile.so libc_malloc_debug.so.0""".split())


def is_glibc_soname(soname):
    """True for glibc's own family (they stay with the system ld.so)."""
    return bool(soname) and (soname in GLIBC_SONAMES or soname.startswith("libnss_"))


@dataclass(eq=False)
class LoadedObject:
    """One object of a process image, as ld.so's link map knows it."""
    name: str                      # the name it was first requested by (ld.so --list's left column)
    path: str                      # the path it was opened by (as ld.so built it; may be relative)
    elf: Optional[ElfFile]
    index: int = -1                # position in Resolution.objects (load order)
    loader: Optional["LoadedObject"] = None   # whose DT_NEEDED loaded it; None for main, preloads, dlopen roots
    deps: List[Optional["LoadedObject"]] = field(default_factory=list)  # per DT_NEEDED, None = not found
    filtees: List[Optional["LoadedObject"]] = field(default_factory=list)  # DT_FILTER/DT_AUXILIARY objects
    soname: Optional[str] = None
    is_glibc: bool = False
    kind: str = "needed"           # main | preload | needed | interp | dlopen
    origin: Optional[str] = None   # $ORIGIN (None: unknown)
    names: set = field(default_factory=set)   # every name that matched it (l_libname list)
    rpath_loader: Optional["LoadedObject"] = None  # glibc's l_loader: whose RPATH it inherits
    file_id: Optional[tuple] = None  # (st_dev, st_ino); None for main and ld.so (never matched by file)
    lname: str = ""                # glibc's l_name, matched against requested names
    seq: int = 0                   # position in ld.so's namespace list (first match wins)
    _rpath: Optional[list] = None
    _runpath: Optional[list] = None

    @property
    def realpath(self):
        return os.path.realpath(self.path)

    @property
    def needed(self):
        return self.elf.needed if self.elf is not None else []

    def __repr__(self):
        return f"<LoadedObject #{self.index} {self.name} => {self.path}>"


class Missing(NamedTuple):
    """A needed library that was not found (an ldd "not found" line)."""
    name: str
    requester: LoadedObject

    def __str__(self):
        return f"{self.name} (needed by {self.requester.path})"


def load_error(res=None, error=None):
    """The ResolveError ld.so would start a program with: its text after
    "PROG: " (the launcher prefixes argv[0]), for the first missing library
    of `res` or for a library that could not be loaded (`error`)."""
    if error is not None:
        return ResolveError(f"error while loading shared libraries: {error}")
    return ResolveError(f"error while loading shared libraries: {res.missing[0].name}: "
                        "cannot open shared object file: No such file or directory")


@dataclass(eq=False)
class Resolution:
    """A program's objects in ld.so's load order."""
    main: LoadedObject
    objects: List[LoadedObject]            # main, preloads, BFS; ld.so where it sits in the search list
    missing: list                          # [Missing(name, requester LoadedObject)] in ldd's order
    interp: str                            # PT_INTERP (or ld.so's path for a library)
    listing: list = field(default_factory=list)  # ld.so --list order: (name, LoadedObject or None); no vdso
    warnings: list = field(default_factory=list)  # ld.so's non-fatal messages (bad LD_PRELOAD entries)
    state: object = None                   # the loadorder.Loader, for resolve_dlopen
    version_problems: list = field(default_factory=list)  # [(fatal, message)] of ld.so's symbol version check

    @property
    def version_errors(self):
        """Versions ld.so would refuse to start without ("FILE: version `V' not found (required by X)")."""
        return [m for fatal, m in self.version_problems if fatal]

    @property
    def vdso_position(self):
        """Index in `listing` before which ld.so --list prints linux-vdso.so.1."""
        if len(self.listing) > 0 and self.listing[0][1] is not None and self.listing[0][1].kind == "interp":
            return 1
        return 0


class SearchContext:
    """Everything a search needs besides the requester: CPU subdirectories,
    ld.so.cache, LD_LIBRARY_PATH, secure mode, cwd and the file cache."""

    def __init__(self, env=None, cwd=None, secure=False, files=None, hw=None, ldcache=None):
        env = os.environ if env is None else env
        self.env = env
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.secure = secure
        # set-id programs ignore the hwcap tunables (SXID_ERASE) as they ignore LD_LIBRARY_PATH
        self.hw = hw or _hwcaps.detect({} if secure else env)
        self.cache = ldcache or _ldcache.default_cache(self.hw)
        self.files = files or shared_files()
        self.llp_text = None if secure else env.get("LD_LIBRARY_PATH")

    def abs(self, path):
        return path if path.startswith("/") else os.path.join(self.cwd, path)

    def expand(self, obj, text):
        return sp.dst_substitute(text, obj.origin if obj is not None else None, self.hw.platform,
                                 self.secure, obj is not None and obj.kind == "main")

    def dirs(self, obj, text, seps=":"):
        return sp.split_search_path(text, seps, lambda p: self.expand(obj, p))

    def search(self, dirs, name, require_suid=False):
        """open_path(): (path, ElfFile) of the first usable candidate, or
        (None, other_class_seen).  FATAL candidates raise ResolveError.
        require_suid: a secure program's LD_PRELOAD takes set-user-ID files only."""
        other = False
        files = self.files
        for d in dirs:
            for cap in self.hw.capstr:
                cand = d + cap + name
                full = self.abs(cand)
                if not files.exists_in_dir(full):
                    continue
                v, x = files.verify(full)
                if v == sp.OK:
                    if require_suid and not os.stat(full).st_mode & 0o4000:
                        continue
                    return cand, x
                if v == sp.FATAL:
                    raise ResolveError(f"{cand}: {x}")
                other |= x == "wrong ELF class"
        return None, other


# Listings and open files shared by calls that bring no FileCache of their
# own.  A long-running caller (the broker) must not see a library tree
# older than a moment, so the shared cache is dropped after FILES_TTL seconds.
FILES_TTL = 2.0
_files = None
_files_born = 0.0


def shared_files():
    """The FileCache used when a SearchContext is given none."""
    global _files, _files_born
    now = time.monotonic()
    if _files is None or now - _files_born > FILES_TTL:
        _files, _files_born = sp.FileCache(), now
    return _files


def clear_caches():
    """Forget cached directory listings and ELF files (after the file system changed)."""
    global _files
    _files = None


def _loader(ctx, trace):
    # the loading machinery (loadorder.py) builds on the classes above
    from loader.loadorder import Loader
    return Loader(ctx, trace)


def resolve_program(path, env=None, cwd=None, preload=None, *, explicit_loader=False,
                    secure=None, context=None, trace=True):
    """Resolve `path` as ld.so would when starting it.

    env: environment (default os.environ) for LD_LIBRARY_PATH, LD_PRELOAD and
    the hwcap mask; preload: list of names instead of env's LD_PRELOAD;
    explicit_loader: as `ld.so PATH` (ld.so --list/ldd) rather than exec;
    secure: AT_SECURE (default: setuid/setgid file not owned by us, kernel
    start only); trace: record missing libraries (as ldd does) instead of
    raising ResolveError for the first one."""
    env = os.environ if env is None else env
    if secure is None:
        secure = False if explicit_loader else _is_secure(path)
    ctx = context or SearchContext(env, cwd, secure)
    return _loader(ctx, trace).load_program(path, env, preload, explicit_loader)


def resolve_library(path_or_name, env=None, cwd=None, *, context=None):
    """Resolve a library alone, as dlopen(path_or_name) from a program with
    no other objects would: the library first, then its dependencies."""
    env = os.environ if env is None else env
    ctx = context or SearchContext(env, cwd)
    return _loader(ctx, trace=False).load_library(path_or_name)


def resolve_dlopen(resolution, name, requester=None):
    """dlopen(name) called from `requester` (default: the main program):
    returns the objects newly loaded (appended to resolution.objects);
    [] when `name` is already loaded.  ResolveError if anything is missing."""
    return resolution.state.dlopen(name, requester)


def _is_secure(path):
    try:
        st = os.stat(path)
    except OSError:
        return False
    return bool((st.st_mode & 0o4000 and st.st_uid != os.geteuid())
                or (st.st_mode & 0o2000 and st.st_gid != os.getegid()))


__all__ = ["LoadedObject", "Missing", "Resolution", "SearchContext", "resolve_program", "resolve_library",
           "resolve_dlopen", "is_glibc_soname", "clear_caches", "shared_files", "RTLD_PATH", "VDSO_NAME"]
