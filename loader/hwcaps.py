"""What this CPU makes glibc 2.36's ld.so search: the glibc-hwcaps
subdirectories (x86-64-v2/v3/v4), the legacy hwcaps subdirectories (power
set of tls, AT_PLATFORM or "haswell", x86_64, avx512_1), $PLATFORM and $LIB.

glibc derives all of these from cpuid in sysdeps/x86/cpu-features.c and
sysdeps/x86/get-isa-level.h; /proc/cpuinfo carries the same bits (the
kernel drops the AVX flags when the OS does not enable their state, which
is glibc's "usable" test).  `ld.so --help` prints the result and the tests
compare against it.
"""
import ctypes
import functools
import os
from dataclasses import dataclass

# Debian's glibc: $LIB expands to the multiarch directory, and these are the
# system search directories (ld.so --help, "system search path").
DST_LIB = "lib/x86_64-linux-gnu"
SYSTEM_DIRS = ("/lib/x86_64-linux-gnu/", "/usr/lib/x86_64-linux-gnu/", "/lib/", "/usr/lib/")

# GNU_PROPERTY_X86_ISA_1_* bits, as ldconfig stores them in the cache
ISA_BASELINE, ISA_V2, ISA_V3, ISA_V4 = 1, 2, 4, 8
# sysdeps/x86/dl-hwcap.h (x86_64): dl_hwcap bits and their subdirectory names
HWCAP_X86_64, HWCAP_X86_AVX512_1 = 1 << 1, 1 << 2
HWCAP_NAMES = {0: "sse2", 1: "x86_64", 2: "avx512_1"}
HWCAP_IMPORTANT = HWCAP_X86_64 | HWCAP_X86_AVX512_1
# platforms known to the cache (dl_x86_platforms, from index 2 on x86_64)
FIRST_PLATFORM_BIT = 48
PLATFORMS = {"haswell": 2, "xeon_phi": 3}
HWCAP_PLATFORM_MASK = ((1 << 4) - 1) << FIRST_PLATFORM_BIT

_V2 = ("cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2")
# Debian's 2.36 has the backport that makes x86-64-v3 need BMI1/BMI2 too
_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe")
_V4 = ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_BASE = ("cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2")
_HASWELL = ("avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt")
# glibc.cpu.hwcaps=-NAME,... turns features off (sysdeps/x86/cpu-tunables.c);
# only those that change the search matter here.  OSXSAVE takes the AVX
# state, hence every AVX feature, with it.
_AVX_STATE = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
              "avx512er", "avx512pf")
_TUNABLE_FLAGS = {
    "AVX": ("avx",), "CX8": ("cx8",), "FMA": ("fma",), "AVX2": ("avx2",), "BMI1": ("bmi1",),
    "BMI2": ("bmi2",), "CMOV": ("cmov",), "SSE2": ("sse2",), "LZCNT": ("abm",), "MOVBE": ("movbe",),
    "SSSE3": ("ssse3",), "POPCNT": ("popcnt",), "SSE4_1": ("sse4_1",), "SSE4_2": ("sse4_2",),
    "AVX512F": ("avx512f",), "AVX512CD": ("avx512cd",), "AVX512BW": ("avx512bw",),
    "AVX512DQ": ("avx512dq",), "AVX512ER": ("avx512er",), "AVX512PF": ("avx512pf",),
    "AVX512VL": ("avx512vl",), "OSXSAVE": _AVX_STATE,
}


@dataclass(frozen=True)
class HwCaps:
    """The CPU-dependent inputs of ld.so's library search."""
    isa_1: int            # ISA_* bits of the CPU (before glibc.cpu.hwcaps tunables)
    subdirs: tuple        # active glibc-hwcaps names, best first
    platform: str         # GLRO(dl_platform): $PLATFORM and a legacy subdir
    hwcap: int            # GLRO(dl_hwcap)
    hwcap_mask: int       # glibc.cpu.hwcap_mask
    capstr: tuple         # every subdirectory tried in each search dir, ending with ""

    @property
    def platform_bit(self):
        """The cache's bit for dl_platform, or None when the cache does not know it."""
        i = PLATFORMS.get(self.platform)
        return None if i is None else 1 << (FIRST_PLATFORM_BIT + i)

    def priority(self, subdir):
        """glibc_hwcaps_priority: 1 for the best active subdirectory, 0 = unusable."""
        try:
            return self.subdirs.index(subdir) + 1
        except ValueError:
            return 0


def _cpu_flags():
    flags, vendor = set(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                if flags and vendor:
                    break
    except OSError:
        pass
    return flags, vendor


def _at_platform():
    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        p = libc.getauxval(15)  # AT_PLATFORM
        if p:
            return ctypes.string_at(p).decode()
    except (OSError, AttributeError):
        pass
    return "x86_64"


def legacy_subdirs(names):
    """_dl_important_hwcaps' power set: `names` in glibc's temp[] order
    (hwcap bits, platform, "tls"); every subset, the one with all members
    first, components listed from the last name to the first."""
    n = len(names)
    out = []
    for mask in range((1 << n) - 1, -1, -1):
        parts = [names[k] for k in range(n - 1, -1, -1) if mask & (1 << k)]
        out.append("".join(p + "/" for p in parts))
    return tuple(out)


def _tunables_from_env(env):
    """(glibc.cpu.hwcap_mask, features turned off by glibc.cpu.hwcaps), from
    GLIBC_TUNABLES and LD_HWCAP_MASK (the mask's alias)."""
    mask = HWCAP_IMPORTANT
    if env.get("LD_HWCAP_MASK"):
        mask = _strtoul(env["LD_HWCAP_MASK"], mask)
    off = set()
    for item in env.get("GLIBC_TUNABLES", "").split(":"):
        key, _, val = item.partition("=")
        if key == "glibc.cpu.hwcap_mask" and val:
            mask = _strtoul(val, mask)
        elif key == "glibc.cpu.hwcaps":
            for name in val.split(","):
                if name.startswith("-"):
                    off.update(_TUNABLE_FLAGS.get(name[1:], ()))
    return mask, frozenset(off)


def _strtoul(s, default):
    """_dl_strtoul: 0x hex, leading-0 octal, else decimal."""
    try:
        if s[:2] in ("0x", "0X"):
            return int(s[2:], 16)
        return int(s, 8) if s.startswith("0") else int(s, 10)
    except ValueError:
        return default


def _isa_level(flags):
    has = flags.issuperset
    isa = 0
    if has(_BASE):
        isa = ISA_BASELINE
        if has(_V2):
            isa |= ISA_V2
            if has(_V3):
                isa |= ISA_V3
                if has(_V4):
                    isa |= ISA_V4
    return isa


@functools.lru_cache(maxsize=16)
def _detect(hwcap_mask, off):
    cpu, vendor = _cpu_flags()
    flags = cpu - off
    has = flags.issuperset
    # cpu_features->isa_1 (the cache's ISA check) is computed before the
    # tunables apply; the active subdirectories and the platform after.
    isa_1 = _isa_level(cpu)
    isa = _isa_level(flags)
    subdirs = tuple(name for name, bit in (("x86-64-v4", ISA_V4), ("x86-64-v3", ISA_V3), ("x86-64-v2", ISA_V2))
                    if isa & bit)
    hwcap = HWCAP_X86_64
    platform = None
    if vendor == "GenuineIntel":
        if "avx512cd" in flags:
            if "avx512er" in flags:
                if "avx512pf" in flags:
                    platform = "xeon_phi"
            elif has(("avx512bw", "avx512dq", "avx512vl")):
                hwcap |= HWCAP_X86_AVX512_1
        if platform is None and has(_HASWELL):
            platform = "haswell"
    if platform is None:
        platform = _at_platform()
    masked = hwcap & hwcap_mask
    names = [HWCAP_NAMES[b] for b in range(64) if masked & (1 << b) and b in HWCAP_NAMES]
    names += [platform, "tls"]
    capstr = tuple(f"glibc-hwcaps/{s}/" for s in subdirs) + legacy_subdirs(names)
    return HwCaps(isa_1, subdirs, platform, hwcap, hwcap_mask, capstr)


def detect(env=None):
    """HwCaps for this machine (and the hwcap mask an environment sets)."""
    return _detect(*_tunables_from_env(os.environ if env is None else env))
