"""Where images live in every client's address space during one broker epoch.

A reserved window that nothing else uses by default on x86-64 Linux (mmap
hands out addresses below the stack, near 0x7f..., and the heap grows from
the program; 0x2000_0000_0000 is far from both) and a random page-aligned
slide chosen when an epoch starts, as dyld's shared cache slides per boot.
Each image gets one non-overlapping range, kept for the whole epoch; a freed
range is reused only after its image's linger delay (the refcount module
decides when), since processes may still have it mapped.

The first range of the epoch (at the slide itself) is reserved for the
epoch's glibc stub region and slot table (loader/stubs.py): every client
maps them there for the whole epoch."""
import secrets

from host_broker.extents import Extents, OutOfSpace
from loader.errors import BrokerError
from loader.stubs import region_size

WINDOW = 0x2000_0000_0000
WINDOW_SIZE = 0x1000_0000_0000          # 16 TiB
SPAN = 0x0400_0000_0000                 # 4 TiB of it usable per epoch
PAGE = 4096
GUARD = PAGE                            # an unmapped page between images


def choose_slide(window_size=WINDOW_SIZE, span=SPAN):
    return secrets.randbelow((window_size - span) // PAGE) * PAGE


class Placements:
    def __init__(self, window=WINDOW, window_size=WINDOW_SIZE, slide=None, span=SPAN):
        if slide is None:
            slide = choose_slide(window_size, span)
        if slide % PAGE or slide + span > window_size:
            raise BrokerError(f"placement slide {slide:#x} does not fit the window")
        self.window, self.window_size, self.slide, self.span = window, window_size, slide, span
        self.extents = Extents(window + slide, span)
        self.stubs_addr = window + slide
        self.extents.reserve(self.stubs_addr, region_size() + GUARD)

    def alloc(self, size, align=PAGE):
        try:
            # the guard page stays inside the extent, after the image
            return self.extents.alloc(size + GUARD, max(align, PAGE))
        except OutOfSpace:
            raise BrokerError(f"placement window exhausted for {size} bytes") from None

    def reserve(self, base, size):
        self.extents.reserve(base, size + GUARD)

    def free(self, base):
        self.extents.free(base)

    def contains(self, addr):
        return self.window <= addr < self.window + self.window_size
