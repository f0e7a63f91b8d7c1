"""ELF64 / x86-64 constants and record layouts (System V gABI, x86-64 psABI,
GNU extensions). loader.elf re-exports all of them."""
import struct
from collections import namedtuple

# e_ident / e_machine
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_X86_64 = 62
EM_AARCH64 = 183
ET_EXEC, ET_DYN = 2, 3

# program header types
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_PHDR, PT_TLS = 1, 2, 3, 4, 6, 7
PT_GNU_EH_FRAME, PT_GNU_STACK, PT_GNU_RELRO = 0x6474E550, 0x6474E551, 0x6474E552
PT_GNU_PROPERTY = 0x6474E553
PF_X, PF_W, PF_R = 1, 2, 4
# x86-64 glibc assumes an executable stack when PT_GNU_STACK is absent
DEFAULT_STACK_FLAGS = PF_R | PF_W | PF_X
PAGE_SIZE = 4096

# dynamic tags
DT = dict(
    NULL=0, NEEDED=1, PLTRELSZ=2, PLTGOT=3, HASH=4, STRTAB=5, SYMTAB=6, RELA=7,
    RELASZ=8, RELAENT=9, STRSZ=10, SYMENT=11, INIT=12, FINI=13, SONAME=14,
    RPATH=15, SYMBOLIC=16, REL=17, RELSZ=18, RELENT=19, PLTREL=20, DEBUG=21,
    TEXTREL=22, JMPREL=23, BIND_NOW=24, INIT_ARRAY=25, FINI_ARRAY=26,
    INIT_ARRAYSZ=27, FINI_ARRAYSZ=28, RUNPATH=29, FLAGS=30, PREINIT_ARRAY=32,
    PREINIT_ARRAYSZ=33, RELRSZ=35, RELR=36, RELRENT=37, GNU_HASH=0x6FFFFEF5,
    VERSYM=0x6FFFFFF0, RELACOUNT=0x6FFFFFF9, FLAGS_1=0x6FFFFFFB,
    VERDEF=0x6FFFFFFC, VERDEFNUM=0x6FFFFFFD, VERNEED=0x6FFFFFFE,
    VERNEEDNUM=0x6FFFFFFF,
)
DF_SYMBOLIC, DF_TEXTREL, DF_BIND_NOW, DF_STATIC_TLS = 0x2, 0x4, 0x8, 0x10
DF_1_NOW, DF_1_NODELETE, DF_1_INITFIRST, DF_1_NOOPEN, DF_1_PIE = 0x1, 0x8, 0x20, 0x40, 0x08000000

# Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16, st_value u64, st_size u64
SYM_SIZE = 24
SYM_STRUCT = struct.Struct("<IBBHQQ")
STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE = 0, 1, 2, 10
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON, STT_TLS, STT_GNU_IFUNC = 0, 1, 2, 3, 4, 5, 6, 10
STV_DEFAULT, STV_INTERNAL, STV_HIDDEN, STV_PROTECTED = 0, 1, 2, 3
SHN_UNDEF, SHN_ABS, SHN_XINDEX = 0, 0xFFF1, 0xFFFF
VERSYM_HIDDEN = 0x8000
VER_FLG_BASE, VER_FLG_WEAK = 0x1, 0x2

# section header types (only what the reader uses)
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_HASH, SHT_DYNAMIC = 0, 1, 2, 3, 4, 5, 6
SHT_NOTE, SHT_NOBITS, SHT_DYNSYM = 7, 8, 11

# note types
NT_GNU_BUILD_ID = 3

# x86-64 relocation types (psABI)
R_X86_64 = dict(
    NONE=0, R64=1, PC32=2, GOT32=3, PLT32=4, COPY=5, GLOB_DAT=6, JUMP_SLOT=7,
    RELATIVE=8, GOTPCREL=9, R32=10, R32S=11, R16=12, PC16=13, R8=14, PC8=15,
    DTPMOD64=16, DTPOFF64=17, TPOFF64=18, TLSGD=19, TLSLD=20, DTPOFF32=21,
    GOTTPOFF=22, TPOFF32=23, PC64=24, GOTOFF64=25, GOTPC32=26, GOT64=27,
    GOTPCREL64=28, GOTPC64=29, GOTPLT64=30, PLTOFF64=31, SIZE32=32, SIZE64=33,
    GOTPC32_TLSDESC=34, TLSDESC_CALL=35, TLSDESC=36, IRELATIVE=37, RELATIVE64=38,
    GOTPCRELX=41, REX_GOTPCRELX=42,
)


def reloc_name(rtype):
    """'R_X86_64_GLOB_DAT' for 6; numbers the psABI does not name stay numbers."""
    for name, value in R_X86_64.items():
        if value == rtype:
            return "R_X86_64_" + (name[1:] if name[0] == "R" and name[1].isdigit() else name)
    return f"R_X86_64_<unknown {rtype}>"


Segment = namedtuple("Segment", "type flags offset vaddr paddr filesz memsz align")
Symbol = namedtuple("Symbol", "name info other shndx value size")
# idx: version index used in VERSYM; file: needed file (VERNEED) or None (VERDEF)
Version = namedtuple("Version", "idx name hash flags file")
Section = namedtuple("Section", "name type flags addr offset size link info addralign entsize")
Note = namedtuple("Note", "name type desc")
# DT_INIT_ARRAY & co: link-time address and number of 8-byte entries
DynArray = namedtuple("DynArray", "vaddr count")
# views over the file: bloom 'Q', buckets/chains 'I'; chains[i] is symbol symoffset + i
GnuHashTable = namedtuple("GnuHashTable", "nbuckets symoffset bloom_size bloom_shift bloom buckets chains")
SysvHashTable = namedtuple("SysvHashTable", "nbucket nchain buckets chains")

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
DYN = struct.Struct("<qQ")
VERDEF = struct.Struct("<HHHHIII")
VERDAUX = struct.Struct("<II")
VERNEED = struct.Struct("<HHIII")
VERNAUX = struct.Struct("<IHHII")
NHDR = struct.Struct("<III")
RELA_SIZE = 24
