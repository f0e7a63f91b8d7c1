"""A private, broker-less ImageSource (protocol in loader/image.py): images
live in one sparse file (a path, e.g. under /dev/shm, that a launcher in
debug mode can map, or an anonymous memfd for in-process use) and are
placed in a window of address space of their own, away from the broker's.
For tests, `python -m loader.plan`, and `loader.open` without a broker."""
import os
import mmap
import secrets

from loader import image as limage
from loader.errors import LdpoolError, ResolveError
from loader.stubs import StubRegion, region_size

WINDOW = 0x3000_0000_0000          # the broker's window is 0x2000_0000_0000
WINDOW_SPAN = 0x0100_0000_0000
PAGE = 4096


def canonical_deps(obj):
    """The object's own breadth-first dependency closure, resolved with an
    empty environment, without itself."""
    from loader import resolve
    path = obj.elf.path          # absolute, where obj.path may be relative to the client's cwd
    if getattr(obj, "kind", None) == "main":
        # a program cannot be dlopen'ed: resolve it as the kernel starts it
        return resolve.resolve_program(path, env={}).objects[1:]
    try:
        return resolve.resolve_library(path, env={}).objects[1:]
    except ResolveError:
        # a dependency found only through the program's RPATH: relocate
        # against glibc alone and leave the rest to the plan's fixups
        return resolve.resolve_library("libc.so.6", env={}).objects


class LocalPool:
    def __init__(self, path=None, size=1 << 30, window=WINDOW, slide=None):
        if path is None:
            self.fd = os.memfd_create("ldpool-local", os.MFD_CLOEXEC)
            self.pool_path = None
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            self.pool_path = os.path.abspath(path)
        os.ftruncate(self.fd, size)
        self.pool_size = size
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mm)
        if slide is None:
            slide = secrets.randbelow(WINDOW_SPAN // 2 // PAGE) * PAGE
        # the stub region first, at the start of the pool and of the window
        self.stubs = StubRegion(window + slide, 0)
        self.stubs.write(self.view[:self.stubs.size])
        self.next_va = window + slide + region_size(self.stubs.capacity) + PAGE
        self.next_off = self.stubs.size
        self.images = {}
        self._building = {}

    # ------------------------------------------------------------ ImageSource
    def image_bytes(self, placed):
        return self.view[placed.pool_off:placed.pool_off + placed.size].toreadonly()

    def place(self, obj, instance=0, host=None):
        elf = obj.elf
        key = limage.image_key(elf, instance)
        p = self._building.get(key) or self.images.get(key)
        if p is not None:
            return p
        lay = limage.layout(elf)
        if elf.e_type == 2:                        # ET_EXEC: fixed addresses
            base = 0
        else:
            align = max([PAGE] + [s.align for s in elf.loads if s.align])
            base = (self.next_va - lay.lo + align - 1) // align * align
            self.next_va = base + lay.lo + lay.map_size + PAGE
        pool_off = self.next_off
        if pool_off + lay.pool_size > self.pool_size:
            raise LdpoolError(f"local pool full ({self.pool_size} bytes) placing {obj.path}")
        self.next_off += (lay.pool_size + PAGE - 1) // PAGE * PAGE
        self._building[key] = limage.PlacedImage(key, base, pool_off, lay.pool_size, None)
        try:
            scope = [(elf, base, False)]
            for d in canonical_deps(obj):
                if d.is_glibc:
                    scope.append((d.elf, 0, True))
                else:
                    scope.append((d.elf, self.place(d).base, False))
            if host is not None and host.elf is not elf:
                scope.append((host.elf, self.place(host).base, False))
            out = self.view[pool_off:pool_off + lay.pool_size]
            info = limage.build_image(elf, base, scope, out, key=key, stubs=self.stubs)
        finally:
            del self._building[key]
        placed = limage.PlacedImage(key, base, pool_off, lay.pool_size, info)
        self.images[key] = placed
        return placed

    def close(self):
        # views of images may outlive the pool (an error's traceback holds
        # the frames that sliced them): the mapping then goes with the last
        try:
            self.view.release()
            self.mm.close()
        except BufferError:
            pass
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
