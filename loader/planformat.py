"""The binary plan of _native/launcher/plan.h: record layouts, a writer
that packs a PlanData into bytes and a reader that unpacks bytes into one
(for stats, --explain and tests).  Field names are the C header's."""
import struct
from dataclasses import dataclass, field

MAGIC = b"LDPPLAN1"
VERSION = 4
NONE = 0xFFFFFFFF

HDR = struct.Struct("<8s10I8Q4Q5Q2IQ32s")
OBJ = struct.Struct("<5Q2I2I2I2I3Q6Q4Qq2I3Q4Q")
SEG = struct.Struct("<3Q2I")
FIX = struct.Struct("<QIIqQ")
IMP = struct.Struct("<4IQ")
SLOT = struct.Struct("<4I")

OBJ_FIELDS = ("l_addr map_start map_end l_ld phdr phnum flags name path seg_first seg_count "
              "fix_first fix_count entry init fini preinit_array preinit_count init_array "
              "init_count fini_array fini_count tls_image tls_filesz tls_memsz tls_align "
              "tls_tpoff tls_modid reserved relro_start relro_end eh_frame_hdr "
              "file_dev file_ino file_size file_mtime_ns").split()
SEG_FIELDS = "addr len pool_off prot kind".split()
FIX_FIELDS = "addr type sym addend aux".split()

OBJ_MAIN, OBJ_PRELOAD, OBJ_NODELETE, OBJ_BIND_NOW = 1, 2, 4, 8
SEG_SHARED, SEG_PRIVATE, SEG_ANON, SEG_FILE = 1, 2, 3, 4
FIX_ABS64, FIX_SYM64, FIX_SYM_PC32, FIX_SYM32, FIX_SYM32S, FIX_IRELATIVE = 1, 2, 3, 4, 5, 6
FIX_DTPMOD, FIX_TPOFF, FIX_TLSDESC, FIX_COPY, FIX_GLIBC_TPOFF = 7, 8, 9, 10, 11
FIX_INTERPOSE = 12
IMP_WEAK, IMP_FUNC, IMP_TLS = 1, 2, 4
IMP_LIBC, IMP_IFUNC = 8, 16     # value is st_value in the libc of libc_build_id (an IFUNC: its resolver)
BUILD_ID_MAX = 32
SLOT_BIND_NOW = 1
HDR_NAMES = ("magic version hdr_size nobj nseg nfix nimport ninit main_obj nglibc first_index "
             "off_obj off_seg off_fix off_import off_init off_glibc off_str str_size "
             "static_tls_size static_tls_align pool_size lease "
             "stubs_addr stubs_size stubs_pool_off slots_addr slots_size nslot libc_build_id_len off_slot libc_build_id").split()

FIX_NAMES = {FIX_ABS64: "ABS64", FIX_SYM64: "SYM64", FIX_SYM_PC32: "SYM_PC32", FIX_SYM32: "SYM32",
             FIX_SYM32S: "SYM32S", FIX_IRELATIVE: "IRELATIVE", FIX_DTPMOD: "DTPMOD",
             FIX_TPOFF: "TPOFF", FIX_TLSDESC: "TLSDESC", FIX_COPY: "COPY",
             FIX_GLIBC_TPOFF: "GLIBC_TPOFF", FIX_INTERPOSE: "INTERPOSE"}
SEG_NAMES = {SEG_SHARED: "shared", SEG_PRIVATE: "private", SEG_ANON: "anon", SEG_FILE: "file"}


class Strings:
    """The string table: offset 0 is the empty string; equal strings share."""

    def __init__(self):
        self.buf = bytearray(b"\0")
        self.index = {b"": 0}

    def add(self, s):
        if s is None:
            return NONE
        b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
        off = self.index.get(b)
        if off is None:
            off = self.index[b] = len(self.buf)
            self.buf += b + b"\0"
        return off


@dataclass
class PlanData:
    objects: list = field(default_factory=list)    # dicts with OBJ_FIELDS
    segments: list = field(default_factory=list)   # tuples in SEG_FIELDS order
    fixups: list = field(default_factory=list)     # tuples in FIX_FIELDS order
    imports: list = field(default_factory=list)    # (name off, version off, flags[, st_value in libc])
    init: list = field(default_factory=list)       # global object indices
    glibc: list = field(default_factory=list)      # string offsets
    slots: list = field(default_factory=list)      # (index, import, obj, flags)
    stubs: tuple = (0, 0, 0, 0, 0)                 # stubs_addr, stubs_size, stubs_pool_off, slots_addr, slots_size
    strings: Strings = field(default_factory=Strings)
    main_obj: int = NONE
    first_index: int = 0
    static_tls_size: int = 0
    static_tls_align: int = 1
    pool_size: int = 0
    lease: int = 0
    libc_build_id: bytes = b""                     # the libc IMP_LIBC values are for


def _align8(n):
    return (n + 7) & ~7


def pack(p):
    """PlanData -> bytes, sections in header order, each 8-aligned."""
    off_obj = HDR.size
    off_seg = off_obj + OBJ.size * len(p.objects)
    off_fix = off_seg + SEG.size * len(p.segments)
    off_import = off_fix + FIX.size * len(p.fixups)
    off_init = off_import + IMP.size * len(p.imports)
    off_glibc = _align8(off_init + 4 * len(p.init))
    off_slot = _align8(off_glibc + 4 * len(p.glibc))
    off_str = off_slot + SLOT.size * len(p.slots)
    out = bytearray(off_str + len(p.strings.buf))
    HDR.pack_into(out, 0, MAGIC, VERSION, HDR.size, len(p.objects), len(p.segments),
                  len(p.fixups), len(p.imports), len(p.init), p.main_obj, len(p.glibc),
                  p.first_index, off_obj, off_seg, off_fix, off_import, off_init, off_glibc,
                  off_str, len(p.strings.buf), p.static_tls_size, p.static_tls_align,
                  p.pool_size, p.lease, *p.stubs, len(p.slots), len(p.libc_build_id), off_slot,
                  p.libc_build_id)
    for i, o in enumerate(p.objects):
        OBJ.pack_into(out, off_obj + i * OBJ.size, *(o.get(f, 0) for f in OBJ_FIELDS))
    for i, s in enumerate(p.segments):
        SEG.pack_into(out, off_seg + i * SEG.size, *s)
    for i, f in enumerate(p.fixups):
        FIX.pack_into(out, off_fix + i * FIX.size, *f)
    for i, m in enumerate(p.imports):
        IMP.pack_into(out, off_import + i * IMP.size, m[0], m[1], m[2], 0, m[3] if len(m) > 3 else 0)
    struct.pack_into(f"<{len(p.init)}I", out, off_init, *p.init)
    struct.pack_into(f"<{len(p.glibc)}I", out, off_glibc, *p.glibc)
    for i, sl in enumerate(p.slots):
        SLOT.pack_into(out, off_slot + i * SLOT.size, *sl)
    out[off_str:] = p.strings.buf
    return bytes(out)


@dataclass
class Plan:
    """A plan read back from bytes; strings already decoded."""
    hdr: dict
    objects: list
    segments: list
    fixups: list
    imports: list
    init: list
    glibc: list
    strtab: bytes
    slots: list = field(default_factory=list)
    import_values: list = field(default_factory=list)   # st_value in libc per import (IMP_LIBC)

    def string(self, off):
        if off == NONE:
            return None
        end = self.strtab.index(b"\0", off)
        return self.strtab[off:end].decode("utf-8", "surrogateescape")


def unpack(data):
    data = bytes(data)
    h = HDR.unpack_from(data, 0)
    if h[0] != MAGIC:
        raise ValueError("not an ldpool plan (bad magic)")
    hdr = dict(zip(HDR_NAMES, h))
    objs = [dict(zip(OBJ_FIELDS, OBJ.unpack_from(data, hdr["off_obj"] + i * OBJ.size)))
            for i in range(hdr["nobj"])]
    segs = [SEG.unpack_from(data, hdr["off_seg"] + i * SEG.size) for i in range(hdr["nseg"])]
    fixes = [FIX.unpack_from(data, hdr["off_fix"] + i * FIX.size) for i in range(hdr["nfix"])]
    rows = [IMP.unpack_from(data, hdr["off_import"] + i * IMP.size) for i in range(hdr["nimport"])]
    imps = [r[:4] for r in rows]
    hdr["libc_build_id"] = hdr["libc_build_id"][:hdr["libc_build_id_len"]]
    init = list(struct.unpack_from(f"<{hdr['ninit']}I", data, hdr["off_init"]))
    glibc = list(struct.unpack_from(f"<{hdr['nglibc']}I", data, hdr["off_glibc"]))
    strtab = data[hdr["off_str"]:hdr["off_str"] + hdr["str_size"]]
    slots = [SLOT.unpack_from(data, hdr["off_slot"] + i * SLOT.size) for i in range(hdr["nslot"])]
    return Plan(hdr, objs, segs, fixes, imps, init, glibc, strtab, slots, [r[4] for r in rows])
