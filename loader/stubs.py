"""The epoch's glibc stubs: one stub region and one slot registry shared by
every image of an ImageSource (the broker's pool, or a LocalPool).

    STUBS ........ STUBS+size    pool pages, shared r-x: stub k is
                                 `jmp *(SLOTS + 8k)(%rip)` (8 bytes)
    (a guard page)
    SLOTS ........ SLOTS+size    per process, anonymous: slot k holds the
                                 address of the glibc function of index k

Index k is a function of (name, version) only, handed out in first-seen
order for the life of the epoch (the broker journals the registry), so
every image that imports `free` points its GOT entry at the same stub, and
the common imports share the first slot page or two in every process
instead of one slot page per object.  Because stub k and slot k are both
8 bytes apart, every stub is the same instruction: the region's content
depends on nothing but the distance SLOTS - STUBS.

A full registry is not an error: the relocation is then left to a
per-process fixup, as for data.
"""
import struct
import threading

from loader.imports import import_name

PAGE = 4096
STUB_SIZE = 8           # ff 25 disp32 (jmp *disp32(%rip)), then two int3
SLOT_SIZE = 8
CAPACITY = 8192

R_64, R_GLOB_DAT, R_JUMP_SLOT = 1, 6, 7
STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC = 0, 2, 10
F_IFUNC = 4
PF_X = 1


def region_size(capacity=CAPACITY):
    """Bytes of address space the stub region, its guard and the slot table take."""
    return 2 * _page_up(capacity * STUB_SIZE) + PAGE


def _page_up(x):
    return (x + PAGE - 1) & ~(PAGE - 1)


class StubRegion:
    def __init__(self, addr, pool_off, capacity=CAPACITY, names=(), on_change=lambda: None):
        self.addr, self.pool_off, self.capacity = addr, pool_off, capacity
        self.size = _page_up(capacity * STUB_SIZE)            # stub bytes (pool)
        self.slots_addr = addr + self.size + PAGE
        self.slots_size = _page_up(capacity * SLOT_SIZE)
        self.on_change = on_change
        self.names = []
        self._index = {}
        self._lock = threading.Lock()   # the broker registers from its build thread too
        for n in names:
            self._register(tuple(n))

    def _register(self, key):
        k = self._index[key] = len(self.names)
        self.names.append(key)
        return k

    def index(self, name, version):
        """The slot index of glibc function (name, version), registered on
        first use; None when the registry is full."""
        key = (name, version)
        k = self._index.get(key)
        if k is not None:
            return k
        with self._lock:
            k = self._index.get(key)
            if k is None:
                if len(self.names) >= self.capacity:
                    return None
                k = self._register(key)
                self.on_change()
        return k

    def stub_addr(self, k):
        return self.addr + STUB_SIZE * k

    def slot_addr(self, k):
        return self.slots_addr + SLOT_SIZE * k

    def content(self):
        """The stub region's bytes."""
        disp = self.slots_addr - (self.addr + 6)
        return (b"\xff\x25" + struct.pack("<i", disp) + b"\xcc\xcc") * (self.size // STUB_SIZE)

    def write(self, out):
        out[:self.size] = self.content()

    def to_json(self):
        return {"addr": self.addr, "pool_off": self.pool_off, "capacity": self.capacity,
                "names": [list(n) for n in self.names]}

    @classmethod
    def from_json(cls, d, on_change=lambda: None):
        return cls(d["addr"], d["pool_off"], d["capacity"], d["names"], on_change)


def is_function_ref(elf, b, r, cache, entries=None):
    """Whether relocation r (bound into glibc's family) stores the address
    of a function and nothing else, so a stub can stand in for it:
    JUMP_SLOT, and GLOB_DAT / R_X86_64_64 without addend of a symbol the
    object declares as a function, that binds to an IFUNC, or (declared
    without a type, as some linkers leave undefined symbols) whose
    definition lies in an executable segment of its object (`entries`: the
    scope's [(elf, l_addr, is_glibc)]).  Weak references too (every
    gcc-built library has a weak GLOB_DAT of __cxa_finalize): they bound
    into glibc in the canonical scope, and the process runs the same glibc
    as the broker, so they are found there too."""
    t = b.rtype[r]
    if t == R_JUMP_SLOT:
        return True
    if t != R_GLOB_DAT and not (t == R_64 and b.addend[r] == 0):
        return False
    if b.flags[r] & F_IFUNC:
        return True
    s = b.symidx[r]
    typ = cache.get(s)
    if typ is None:
        typ = cache[s] = elf.symbol(s).info & 0xF
    if typ == STT_NOTYPE and entries is not None and b.target[r] >= 0:
        return _in_code(entries[b.target[r]], b.value[r])
    return typ in (STT_FUNC, STT_GNU_IFUNC)


def _in_code(entry, value):
    delf, l_addr = entry[0], entry[1]
    v = value - l_addr
    return any(seg.flags & PF_X and seg.vaddr <= v < seg.vaddr + seg.memsz for seg in delf.loads)


def stub_index(stubs, elf, b, r, cache, entries=None):
    """Slot index for relocation r bound into glibc, or None when it stays
    a per-process fixup (no stub region, not a plain function reference,
    registry full)."""
    if stubs is None or not is_function_ref(elf, b, r, cache, entries):
        return None
    return stubs.index(*import_name(elf, b.symidx[r]))
