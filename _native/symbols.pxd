# C-level view of a lookup scope, shared by symbols.pyx (owner) and reloc.pyx.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from *:
    """
    typedef struct {
        uint32_t st_name; uint8_t st_info; uint8_t st_other;
        uint16_t st_shndx; uint64_t st_value; uint64_t st_size;
    } ldp_sym;
    """
    ctypedef struct ldp_sym:
        uint32_t st_name
        uint8_t st_info
        uint8_t st_other
        uint16_t st_shndx
        uint64_t st_value
        uint64_t st_size

# One object as the lookup needs it; every pointer is inside the object's
# file mapping and every count was checked against the file size.
cdef struct ObjTab:
    const ldp_sym *symtab
    uint32_t nsyms
    const char *strtab
    uint64_t strsz
    const uint16_t *versym          # NULL: object has no symbol versions
    uint32_t gnu_nbuckets, gnu_symoffset, gnu_bloom_mask, gnu_shift
    const uint64_t *gnu_bloom
    const uint32_t *gnu_buckets
    const uint32_t *gnu_chain       # indexed by symbol index (already biased)
    uint32_t sysv_nbucket, sysv_nchain
    const uint32_t *sysv_buckets
    const uint32_t *sysv_chain
    uint32_t nver                   # entries of ver_hash / ver_name
    uint32_t *ver_hash              # 0: no version at that index (base, local, global)
    const char **ver_name
    uint64_t l_addr
    int is_exec                     # glibc's lt_executable: skipped for COPY lookups
    int nscopes                     # lookup scope lists of this object as a requester
    int *scope_start                # into SymScope.lists: [start, start+len)
    int *scope_len

# lookup type classes (glibc ELF_RTYPE_CLASS_*)
cdef enum:
    TC_NORMAL = 0
    TC_PLT = 1
    TC_COPY = 2
    TC_NEWEST = 8       # DL_LOOKUP_RETURN_NEWEST (dlsym): not a glibc type class

cdef enum:
    LK_FOUND = 1
    LK_WEAK_UNDEF = 2
    LK_UNDEF = 3
    LK_LOCAL = 4        # local/hidden reference: binds to the requester itself
    LK_BAD = -1         # broken table (name outside the string table...)

cdef class SymScope:
    cdef ObjTab *objs
    cdef int n
    cdef int *lists
    cdef int nlists
    cdef list keep
    cdef int has_sysv_only
    cdef _fill(self, ObjTab *o, elf, uint64_t l_addr)
    cdef _versions(self, ObjTab *o, elf)
    cdef int lookup(self, const char *name, uint32_t gnuh, uint32_t ver_hash,
                    const char *ver_name, int type_class, int undef,
                    const ldp_sym *ref, int *out_obj, uint32_t *out_sym) noexcept nogil
    cdef int lookup_list(self, const int *lst, int n, const char *name, uint32_t gnuh,
                         uint32_t ver_hash, const char *ver_name, int type_class,
                         const ldp_sym *ref, int *out_obj, uint32_t *out_sym,
                         uint32_t *oldh, bint *have_oldh) noexcept nogil
    cdef int resolve_ref(self, int undef, uint32_t symidx, int type_class,
                         int *out_obj, uint32_t *out_sym, int *protected) noexcept nogil
