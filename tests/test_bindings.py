"""Acceptance: `loader.bindings` equals glibc's own LD_DEBUG=bindings.

For each program, glibc's lines (LD_BIND_NOW=1 LD_DEBUG=bindings, written to
LD_DEBUG_OUTPUT, only the started process's file) whose requesting object is
one of the program's start-up objects outside glibc's family are compared,
as sorted sets, with what loader.bindings computes from the resolution.
Lines from libraries the program dlopen()s later are not start-up bindings.
"""
import io
import os
import shutil

import pytest

from engine_support import binding_requester, glibc_bindings, resolve
from loader import bindings

LLVM = "/usr/lib/llvm-14/bin/"
# (program, arguments that make it exit at once): C, C++, many-library ones
PROGRAMS = [
    ("xz", ["--version"]), ("bash", ["--version"]), ("ls", ["--version"]), ("cp", ["--version"]),
    ("sort", ["--version"]), ("tar", ["--version"]), ("gzip", ["--version"]), ("zstd", ["--version"]),
    ("grep", ["--version"]), ("sed", ["--version"]), ("find", ["--version"]), ("diff", ["--version"]),
    ("make", ["--version"]), ("perl", ["-e", "1"]), ("git", ["--version"]), ("curl", ["--version"]),
    ("openssl", ["version"]), ("sqlite3", ["-version"]), ("file", ["--version"]), ("jq", ["--version"]),
    ("objdump", ["--version"]), ("ld.bfd", ["--version"]), ("readelf", ["--version"]),
    ("g++", ["--version"]), ("cmake", ["--version"]), ("gdb", ["--version"]), ("vim.basic", ["--version"]),
    ("python3.11", ["-S", "-c", "1"]), ("ssh", ["-V"]), ("gpg", ["--version"]), ("wget", ["--version"]),
    ("ps", ["--version"]), ("strace", ["-V"]),
    (LLVM + "llc", ["--version"]), (LLVM + "opt", ["--version"]), (LLVM + "lli", ["--version"]),
    (LLVM + "llvm-objdump", ["--version"]), (LLVM + "llvm-nm", ["--version"]),
    (LLVM + "llvm-ar", ["--version"]), (LLVM + "llvm-mc", ["--version"]), (LLVM + "FileCheck", ["--version"]),
]


def _path(prog):
    return prog if prog.startswith("/") else shutil.which(prog, path="/usr/bin:/bin")


AVAILABLE = [(p, a) for p, a in PROGRAMS if _path(p) and os.access(_path(p), os.X_OK)]


requester = binding_requester


@pytest.mark.parametrize("prog,args", AVAILABLE, ids=[os.path.basename(p) for p, _ in AVAILABLE])
def test_bindings_equal_glibc(prog, args, tmp_path):
    path = _path(prog)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
    res = resolve(path, env=env)
    out = io.StringIO()
    bindings.print_bindings(res, file=out)
    ours = set(out.getvalue().splitlines())
    start = {bindings.display_name(o, i) for i, o in enumerate(res.objects) if not o.is_glibc}
    theirs = {l for l in glibc_bindings(path, args, tmp_path) if requester(l) in start}
    print(f"{os.path.basename(prog)}: {len(ours)} bindings, glibc {len(theirs)}, "
          f"missing {len(theirs - ours)}, extra {len(ours - theirs)}")
    assert sorted(ours - theirs)[:5] == [] and sorted(theirs - ours)[:5] == []
    assert len(ours) > 0


def test_enough_programs():
    assert len(AVAILABLE) >= 30, [p for p, _ in PROGRAMS if (p, _) not in AVAILABLE]
