/* The plan: everything ldpool-exec needs to start one program, prepared by
 * the broker (loader/plan.py writes it, this header is the contract).
 * All integers little-endian; all addresses are final runtime addresses.
 * Strings are offsets into the string table (NUL-terminated).
 *
 * The launcher never looks up a symbol of a pooled object while starting a
 * program: the plan's fixups say exactly what to write where.  The only
 * names it resolves are imports from glibc's family (dlvsym, after its own
 * override table), because glibc sits at a different address in every
 * process; imports the plan builder found in libc.so.6 itself carry their
 * st_value, used instead of dlvsym when the process's libc has the plan's
 * build-id (LDP_IMP_LIBC).
 */
#ifndef LDPOOL_PLAN_H
#define LDPOOL_PLAN_H
#include <stdint.h>

#define LDP_PLAN_MAGIC "LDPPLAN1"
#define LDP_PLAN_VERSION 4   /* 2: ldp_obj file identity, LDP_SEG_FILE; 3: the epoch's stub region and slot table;
                                4: libc st_values of imports (LDP_IMP_LIBC), libc_build_id */
#define LDP_BUILD_ID_MAX 32
#define LDP_NONE 0xFFFFFFFFu

struct ldp_plan_hdr {
    char magic[8];
    uint32_t version, hdr_size;
    uint32_t nobj, nseg, nfix, nimport;
    uint32_t ninit, main_obj;     /* init order: ninit u32 global object indices at off_init */
    uint32_t nglibc;              /* glibc-family sonames to dlopen(RTLD_NOW|RTLD_GLOBAL) first: u32 string offsets at off_glibc */
    uint32_t first_index;         /* global index of objects[0]: 0 for a program, the lease's object count for a dlopen plan */
    uint64_t off_obj, off_seg, off_fix, off_import, off_init, off_glibc, off_str, str_size;
    uint64_t static_tls_size;     /* bytes of the launcher's static TLS reserve the plan uses */
    uint64_t static_tls_align;
    uint64_t pool_size;           /* size of the pool the segments refer to */
    uint64_t lease;               /* broker's id for this acquisition */
    /* The epoch's glibc stubs (loader/stubs.py): stub k at stubs_addr + 8k is
     * `jmp *(slots_addr + 8k)(%rip)`; the region is pool pages (shared r-x,
     * from stubs_pool_off), the slot table is per process (anonymous, read-only
     * once filled).  Both are the same for every plan of one broker epoch;
     * stubs_addr 0: no stubs (then nslot is 0). */
    uint64_t stubs_addr, stubs_size, stubs_pool_off;
    uint64_t slots_addr, slots_size;
    uint32_t nslot;               /* nslot struct ldp_slot at off_slot */
    uint32_t libc_build_id_len;   /* 0: no LDP_IMP_LIBC import */
    uint64_t off_slot;
    uint8_t libc_build_id[LDP_BUILD_ID_MAX];   /* GNU build-id of the libc.so.6 the values are for */
};

enum {
    LDP_OBJ_MAIN = 1,      /* the program */
    LDP_OBJ_PRELOAD = 2,   /* came from LD_PRELOAD */
    LDP_OBJ_NODELETE = 4,  /* DF_1_NODELETE */
    LDP_OBJ_BIND_NOW = 8,
};

/* Objects are listed in load order (main first, then preloads, then
 * breadth-first DT_NEEDED).  Fixups are applied object by object in reverse
 * of this order (dependencies first), as ld.so relocates. */
struct ldp_obj {
    uint64_t l_addr;               /* load bias: runtime = l_addr + p_vaddr */
    uint64_t map_start, map_end;   /* whole reserved range, page aligned */
    uint64_t l_ld;                 /* runtime address of PT_DYNAMIC, 0 if none */
    uint64_t phdr;                 /* runtime address of the program headers */
    uint32_t phnum, flags;
    uint32_t name, path;           /* l_name as dl* report it; resolved path */
    uint32_t seg_first, seg_count;
    uint32_t fix_first, fix_count;
    uint64_t entry;                /* runtime entry point (main object) */
    uint64_t init, fini;           /* DT_INIT / DT_FINI runtime addresses or 0 */
    uint64_t preinit_array, preinit_count;
    uint64_t init_array, init_count;
    uint64_t fini_array, fini_count;
    uint64_t tls_image, tls_filesz, tls_memsz, tls_align;
    int64_t tls_tpoff;             /* block offset from the thread pointer (negative); 0 = no TLS */
    uint32_t tls_modid, reserved;  /* module id in ldpool's dynamic TLS index space */
    uint64_t relro_start, relro_end;
    uint64_t eh_frame_hdr;         /* runtime address of PT_GNU_EH_FRAME or 0 */
    /* the file `path` names, as the plan was built from it: SEG_FILE
     * segments are mapped from it only while it still is that file */
    uint64_t file_dev, file_ino, file_size, file_mtime_ns;
};

enum {
    LDP_SEG_SHARED = 1,   /* MAP_SHARED from the pool, read-only (+exec) */
    LDP_SEG_PRIVATE = 2,  /* MAP_PRIVATE from the pool; writable while fixups run, then `prot` */
    LDP_SEG_ANON = 3,     /* anonymous zero pages (bss, holes) */
    LDP_SEG_FILE = 4,     /* MAP_PRIVATE from the object's file `path` at file offset
                             pool_off, read-only (+exec): pages the pre-relocated image
                             holds unchanged (text, rodata), shared with ld.so's
                             processes through the page cache; the pool need not hold them */
};

/* Segments cover each object's range page by page, in address order. */
struct ldp_seg {
    uint64_t addr, len;   /* page aligned */
    uint64_t pool_off;    /* page aligned offset in the pool (SHARED/PRIVATE) or the file (FILE) */
    uint32_t prot;        /* final PROT_* bits */
    uint32_t kind;
};

/* One vocabulary for every per-process write.  S = address of import `sym`
 * (glibc family via dlvsym or a launcher override; 0 for a missing weak
 * import), T(o) = static TLS offset of object o, M(o) = TLS module id. */
enum {
    LDP_FIX_ABS64 = 1,     /* *(u64*)addr = addend                                   */
    LDP_FIX_SYM64 = 2,     /* *(u64*)addr = S + addend                               */
    LDP_FIX_SYM_PC32 = 3,  /* *(i32*)addr = S + addend - addr     (range checked)    */
    LDP_FIX_SYM32 = 4,     /* *(u32*)addr = S + addend            (range checked)    */
    LDP_FIX_SYM32S = 5,    /* *(i32*)addr = S + addend            (range checked)    */
    LDP_FIX_IRELATIVE = 6, /* *(u64*)addr = ((u64(*)(void))addend)()                 */
    LDP_FIX_DTPMOD = 7,    /* *(u64*)addr = M(sym)        (sym = object index)       */
    LDP_FIX_TPOFF = 8,     /* *(u64*)addr = T(sym) + addend (sym = object index)     */
    LDP_FIX_TLSDESC = 9,   /* addr[0] = static TLSDESC resolver, addr[1] = T(sym)+addend */
    LDP_FIX_COPY = 10,     /* memcpy(addr, sym != NONE ? S : aux, addend bytes); a copy of
                              glibc data also repoints glibc's own GOT at addr        */
    LDP_FIX_GLIBC_TPOFF = 11, /* *(u64*)addr = tpoff of glibc TLS import sym + addend */
    LDP_FIX_INTERPOSE = 12, /* nothing is written: glibc's own GOT slots that point into
                               [S, S + addend) move to addr + the same offset, as ld.so
                               binds glibc to the program's definitions (argp_program_version...) */
};

struct ldp_fix {
    uint64_t addr;
    uint32_t type, sym;
    int64_t addend;
    uint64_t aux;
};

/* LDP_IMP_LIBC: dlvsym(RTLD_DEFAULT) finds this import in libc.so.6 (never
 * in the launcher), at libc's l_addr + value; LDP_IMP_IFUNC: value is an
 * IFUNC resolver, called without arguments as ld.so does on x86-64. */
enum { LDP_IMP_WEAK = 1, LDP_IMP_FUNC = 2, LDP_IMP_TLS = 4, LDP_IMP_LIBC = 8, LDP_IMP_IFUNC = 16 };

struct ldp_import {
    uint32_t name, version;   /* version LDP_NONE: unversioned */
    uint32_t flags, reserved;
    uint64_t value;           /* st_value in libc (LDP_IMP_LIBC) or 0 */
};

/* Slot `index` of the slot table gets the address of import `import`.  `obj`
 * (global object index) is the first object using it, for messages. */
enum { LDP_SLOT_BIND_NOW = 1 };   /* a user is BIND_NOW: a missing symbol fails at start */
struct ldp_slot {
    uint32_t index, import, obj, flags;
};

#endif
