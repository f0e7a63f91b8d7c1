"""Helpers for the relocation-engine tests: resolve a program (through
loader.resolve, or `ld.so --list` while that is not available), find where a
live process mapped its objects, read its memory, build file images."""
import os
import subprocess
from types import SimpleNamespace

from loader.elf import ElfFile

RTLD = "/lib64/ld-linux-x86-64.so.2"
_GLIBC = ("ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 "
          "libresolv.so.2 libmvec.so.1 libutil.so.1 libanl.so.1").split()


def _glibc(soname):
    return bool(soname) and (soname in _GLIBC or soname.startswith("libnss_"))


def resolve(prog, preload=None, env=None):
    """Objects of `prog` in load order: .objects with .elf .path .name .is_glibc."""
    try:
        from loader.resolve import resolve_program
        return resolve_program(prog, env=env, preload=preload)
    except ImportError:
        pass
    e = dict(os.environ if env is None else env)
    if preload:
        e["LD_PRELOAD"] = ":".join(preload)
    out = subprocess.run([RTLD, "--list", prog], capture_output=True, text=True, env=e, check=True).stdout
    paths = [prog]
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            p = line.split("=>")[1].split("(")[0].strip()
            if p:
                paths.append(p)
        elif line.startswith("/"):
            paths.append(line.split()[0])
    objs = []
    for i, p in enumerate(paths):
        elf = ElfFile(p)
        objs.append(SimpleNamespace(elf=elf, path=p, name=p, index=i, soname=elf.soname,
                                    is_glibc=i > 0 and _glibc(elf.soname)))
    return SimpleNamespace(objects=objs, missing=[])


def live_l_addrs(pid, objects):
    """Load bias of each object in process `pid`, from /proc/PID/maps."""
    lowest = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6:
                continue
            start = int(parts[0].split("-")[0], 16)
            ino = int(parts[4])
            if ino and ino not in lowest or (ino and start < lowest[ino][0]):
                lowest[ino] = (start, int(parts[2], 16))
    out = []
    for o in objects:
        start, off = lowest[o.elf.st_ino]
        first = min(s.vaddr for s in o.elf.loads) & ~0xFFF
        assert off == 0
        out.append(start - first)
    return out


def read_mem(pid, start, size):
    """Bytes [start, start+size) of the process; unreadable pages stay zero."""
    buf = bytearray(size)
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        for page in range(0, size, 4096):
            n = min(4096, size - page)
            try:
                f.seek(start + page)
                chunk = f.read(n)
            except OSError:
                continue
            buf[page:page + len(chunk)] = chunk
    return buf


def read_relocated(pid, b, image_addr, size):
    """The live image, read only over the span the relocations touch (the
    rest stays zero): big libraries keep most of their bytes in text."""
    addrs = list(b.addr) + list(b.relr)
    if not addrs:
        return bytearray(size)
    lo = (min(addrs) - image_addr) & ~0xFFF
    hi = min(size, max(addrs) - image_addr + 16)
    buf = bytearray(size)
    buf[lo:hi] = read_mem(pid, image_addr + lo, hi - lo)
    return buf


def file_image(elf, l_addr):
    """(image, image_addr): the object's memory image as the file gives it."""
    lo = min(s.vaddr for s in elf.loads) & ~0xFFF
    hi = max(s.vaddr + s.memsz for s in elf.loads)
    img = bytearray(hi - lo)
    for s in elf.loads:
        img[s.vaddr - lo:s.vaddr - lo + s.filesz] = elf.buf[s.offset:s.offset + s.filesz]
    return img, l_addr + lo


def wait_mapped(pid, inodes, timeout=10.0):
    """Wait until the process has mapped every inode (ld.so finished)."""
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/maps") as f:
                seen = {int(line.split()[4]) for line in f if len(line.split()) >= 6}
        except OSError:
            seen = set()
        if inodes <= seen:
            return True
        time.sleep(0.02)
    return False


def tls_tables(b, live_img, image_addr, n):
    """Module ids and TP offsets that explain this object's live TLS words
    (ld.so's choice, which we cannot know ahead); one word per module."""
    import array
    modid = array.array("q", [0] * n)
    tpoff = array.array("q", [0] * n)
    for k in range(b.count):
        t, ty = b.target[k], b.rtype[k]
        if t < 0:
            continue
        word = int.from_bytes(live_img[b.addr[k] - image_addr:b.addr[k] - image_addr + 8], "little")
        if ty == 16 and not modid[t]:
            modid[t] = word
        elif ty == 18 and not tpoff[t]:
            tpoff[t] = (word - b.value[k] - b.addend[k] + 2**63) % 2**64 - 2**63
        elif ty == 36 and not tpoff[t]:
            arg = int.from_bytes(live_img[b.addr[k] - image_addr + 8:b.addr[k] - image_addr + 16], "little")
            tpoff[t] = (arg - b.value[k] - b.addend[k] + 2**63) % 2**64 - 2**63
    return modid, tpoff


def tlsdesc_resolver(b, live_img, image_addr):
    """The static TLSDESC resolver ld.so chose (first word of a TLSDESC)."""
    for k in range(b.count):
        if b.rtype[k] == 36 and b.target[k] >= 0:
            return int.from_bytes(live_img[b.addr[k] - image_addr:b.addr[k] - image_addr + 8], "little")
    return 0


def live_check(pid, scope, i, relro_only=False):
    """Relocate object i from its file at its live address and compare every
    relocated word with process `pid`.  Returns (checked, deferred,
    mismatches: list of strings)."""
    from _native import reloc
    elf = scope.elf(i)
    b = reloc.bind(scope, i)
    img, image_addr = file_image(elf, scope.l_addr(i))
    live_img = read_relocated(pid, b, image_addr, len(img))
    modid, tpoff = tls_tables(b, live_img, image_addr, len(scope))
    desc = tlsdesc_resolver(b, live_img, image_addr)
    deferred = set(reloc.apply(img, image_addr, b, tls_modid=modid, tls_tpoff=tpoff,
                               tlsdesc_resolver=desc))
    lo, hi = 0, len(img)
    if relro_only:
        seg = elf.segment(0x6474E552)
        lo = scope.l_addr(i) + seg.vaddr - image_addr
        hi = lo + seg.memsz
    bad, checked = [], 0
    for k in range(b.count):
        off = b.addr[k] - image_addr
        if k in deferred or b.rtype[k] == 0 or not lo <= off < hi:
            continue
        width = 4 if b.rtype[k] in (2, 10, 11, 32) else 16 if b.rtype[k] == 36 else 8
        checked += 1
        if img[off:off + width] != live_img[off:off + width]:
            bad.append(f"{elf.path}: reloc {k} type {b.rtype[k]} at {b.addr[k]:#x}: ours "
                       f"{bytes(img[off:off + width]).hex()} live {bytes(live_img[off:off + width]).hex()}")
    for a in b.relr:
        off = a - image_addr
        if lo <= off < hi:
            checked += 1
            if img[off:off + 8] != live_img[off:off + 8]:
                bad.append(f"{elf.path}: RELR word at {a:#x}")
    for k in deferred:
        if not (b.rtype[k] in (5, 37) or b.flags[k] & reloc.F_IFUNC):
            bad.append(f"{elf.path}: reloc {k} type {b.rtype[k]} deferred without reason")
    return checked, len(deferred), bad


def glibc_bindings(path, args, tmp_path):
    """glibc's own start-up bindings of `path args` (LD_BIND_NOW=1
    LD_DEBUG=bindings into LD_DEBUG_OUTPUT), without the PID prefix."""
    env = dict(os.environ, LD_BIND_NOW="1", LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(tmp_path / "dbg"))
    for k in ("LD_PRELOAD", "LD_LIBRARY_PATH"):
        env.pop(k, None)
    p = subprocess.Popen([path, *args], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait(timeout=60)
    lines = set()
    with open(tmp_path / f"dbg.{p.pid}") as f:
        for line in f:
            if "binding file " in line:
                lines.add(line.split("\t", 1)[1].rstrip("\n"))
    return lines


def binding_requester(line):
    return line[len("binding file "):].split(" [0] to ", 1)[0]
