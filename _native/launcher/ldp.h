/* Internal interfaces of ldpool-exec, shared by its C files (one concept
 * per file: see the comment at the top of each). */
#ifndef LDP_H
#define LDP_H
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <elf.h>
#include <link.h>
#include <dlfcn.h>
#include <spawn.h>
#include <unistd.h>
#include "plan.h"

/* ---- messages (util.c) ---- */
extern const char *ldp_progname;     /* the program being run, for messages */
void ldp_die(int status, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
void ldp_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int ldp_debug;                 /* LDPOOL_DEBUG set */
int ldp_version_error(const char *msg);  /* ld.so's version error text: its status is 1 */

/* ---- a validated plan (plan_check.c) ---- */
struct ldp_plan {
    const unsigned char *buf;
    size_t len;
    const struct ldp_plan_hdr *h;
    const struct ldp_obj *obj;
    const struct ldp_seg *seg;
    const struct ldp_fix *fix;
    const struct ldp_import *imp;
    const uint32_t *init, *glibc;
    const char *str;
    const struct ldp_slot *slot; /* nslot slot records (NULL when none) */
    uint64_t *imp_addr;          /* resolved imports (fixup.c) */
    uint32_t first_index;
};
/* Bounds-check everything; -1 with a one-line reason in err for a bad plan,
 * -2 for a valid plan this launcher cannot honour (static TLS too big). */
int ldp_plan_check(struct ldp_plan *p, const void *buf, size_t len, uint64_t pool_size,
                   char *err, size_t errlen);
static inline const char *ldp_str(const struct ldp_plan *p, uint32_t off) { return p->str + off; }

/* ---- libraries that replace glibc's allocator, preloaded by ld.so (hosted.c) ---- */
int ldp_hosted_active(void);                               /* started again for them */
void ldp_hosted_preload(const struct ldp_plan *p, char **argv);  /* execs when one is missing */
void ldp_hosted_restore_env(void);                        /* LD_PRELOAD as the user gave it */

/* ---- runtime objects: global index space across the program's plan and
 *      later dlopen plans (objects.c) ---- */
enum { LDP_ST_MAPPED = 1, LDP_ST_RELOCATED = 2, LDP_ST_INITED = 3, LDP_ST_FINISHED = 4, LDP_ST_GONE = 5 };
struct ldp_rt {
    struct link_map lm;          /* first: a pointer to it is also our dl handle */
    uint32_t magic;
    const struct ldp_obj *o;
    struct ldp_plan *plan;
    uint32_t index;              /* global index */
    int state, refcount, dlopened, global;
    int nodelete;                /* DF_1_NODELETE, RTLD_NODELETE or a unique symbol: dlclose keeps it */
    int unique_checked;          /* nodelete includes the unique-symbol rule (dlfns.c) */
    const char *name, *path, *soname;
    uint64_t dev, ino;           /* of path, on first need (ino 0: not yet / unknown) */
    int statted;
    /* dynamic info of the mapped image */
    const Elf64_Sym *symtab;
    const char *strtab;
    const uint32_t *gnu_hash, *sysv_hash;
    const Elf64_Versym *versym;
    const Elf64_Verdef *verdef;
    uint32_t nsyms;                   /* 0: not counted yet (ldp_rt_nsyms) */
    uint32_t *deps; uint32_t ndeps;   /* global indices of the local scope (BFS), for dlsym(handle); NULL: not yet (ldp_rt_deps) */
};
#define LDP_RT_MAGIC 0x4c445052u
extern struct ldp_rt **ldp_objs;
extern uint32_t ldp_nobj;
extern uint32_t ldp_main;            /* global index of the program */
extern int ldp_adds, ldp_subs;       /* for dl_iterate_phdr */
void ldp_objects_add(struct ldp_plan *p);
void ldp_objects_mapped(struct ldp_plan *p);
void ldp_objects_relink(void);               /* l_next/l_prev of the handles' link maps */
void ldp_rt_dyninfo(struct ldp_rt *r);
void ldp_rt_deps(struct ldp_rt *r);          /* r->deps, on first need (dl* lock held) */
uint32_t ldp_rt_nsyms(struct ldp_rt *r);     /* r->nsyms, on first need */
struct ldp_rt *ldp_find_addr(const void *addr);
struct ldp_rt *ldp_from_handle(void *h);
struct ldp_rt *ldp_find_name(const char *name);
struct ldp_rt *ldp_find_unloaded(const char *name);
void ldp_unwind_prime(struct ldp_plan *p);   /* the pooled libgcc_s, for glibc's own copy (unwindprime.c) */
int ldp_serinfo(struct ldp_rt *r, Dl_serinfo *si, int counting);   /* dlinfo RTLD_DI_SERINFO[SIZE] (serinfo.c) */

/* ---- mapping (mapping.c) ---- */
int ldp_map_plan(struct ldp_plan *p, int poolfd, char *err, size_t errlen);
void ldp_protect_plan(struct ldp_plan *p);
void ldp_unmap(struct ldp_rt *r);

/* ---- fixups (fixup.c) ---- */
int ldp_resolve_imports(struct ldp_plan *p, char *err, size_t errlen);
extern int ldp_dlopen_now;              /* dlopen(RTLD_NOW) being loaded: missing functions fail it */
int ldp_apply_fixups(struct ldp_plan *p, char *err, size_t errlen);
void *ldp_override(const char *name);

/* ---- the epoch's glibc stubs and this process's slot table (slots.c) ---- */
/* Map the stub region (from the pool) and the slot table on the first plan
 * that has them; a later plan must name the same ones. */
int ldp_slots_map(struct ldp_plan *p, int poolfd, char *err, size_t errlen);
/* Fill the plan's slots: value(p, slot record) gives each address (0 with
 * err set: fail).  The table is writable only meanwhile. */
int ldp_slots_fill(struct ldp_plan *p, uint64_t (*value)(struct ldp_plan *, const struct ldp_slot *, char *, size_t),
                   char *err, size_t errlen);
/* The stub standing for glibc function address a in this process (its slot
 * holds a), else a: what pooled code's own references to it hold. */
void *ldp_slot_identity(void *a);
/* The function stub `a` jumps to in this process, else a (dladdr). */
const void *ldp_slot_target(const void *a);

/* ---- TLS (tls.c) ---- */
void ldp_tls_setup(void);
int ldp_tls_install(struct ldp_plan *p, char *err, size_t errlen);
/* a dlopen plan's objects that static TLS accesses target get a static block */
int ldp_tls_assign_static(struct ldp_plan *p, char *err, size_t errlen);
/* fn(thread pointer) for every thread of the process, under nptl's lock;
 * -1 when glibc's thread list is out of reach (threads.c) */
int ldp_each_thread(void (*fn)(uint64_t tp, void *arg), void *arg);
uint64_t ldp_tls_tp(void);
void *ldp_tls_get_addr(void *ti);
void *ldp_tls_block(struct ldp_rt *r);      /* this thread's TLS block of r, or NULL */
void ldp_tlsdesc_static(void);      /* tlsdesc.S */
void *ldp_tls_errslot(void);         /* per-thread launcher state (dlerror) */

/* ---- init/fini and program start (start.c) ---- */
void ldp_run_inits(struct ldp_plan *p, int argc, char **argv, char **envp);
void ldp_run_finis_obj(struct ldp_rt *r);
/* the live objects among the first nobj in glibc's finaliser order, or 0
 * when the reverse init order is that order (no dlopen'ed object) (finiorder.c) */
uint32_t ldp_fini_order(uint32_t nobj, uint32_t *out);
int ldp_libc_start_main(int (*main)(int, char **, char **), int argc, char **argv,
                        void (*init)(int, char **, char **), void (*fini)(void),
                        void (*rtld_fini)(void), void *stack_end);
void ldp_start(int argc, char **argv, char **envp, const char *execfn) __attribute__((noreturn));
void ldp_jump(void *sp, void *entry) __attribute__((noreturn));   /* tlsdesc.S */
void ldp_set_identity(const char *argv0);
void ldp_move_args(char **argv, int first, int argc, const char **keep[], int nkeep);
extern int ldp_argc; extern char **ldp_argv, **ldp_envp;

/* ---- symbols of pooled objects (symbols.c) ---- */
const Elf64_Sym *ldp_lookup_in(struct ldp_rt *r, const char *name, const char *version);
void *ldp_sym_value(struct ldp_rt *r, const Elf64_Sym *s);
const Elf64_Sym *ldp_nearest(struct ldp_rt *r, uint64_t addr);

/* ---- dl* family (dlfns.c, iterate.c) ---- */
void *ldp_dlopen(const char *file, int mode);
void *ldp_dlsym(void *h, const char *name);
void *ldp_dlvsym(void *h, const char *name, const char *version);
int ldp_dlclose(void *h);
char *ldp_dlerror(void);
int ldp_dladdr(const void *addr, Dl_info *info);
int ldp_dladdr1(const void *addr, Dl_info *info, void **extra, int flags);
int ldp_dlinfo(void *h, int req, void *arg);
int ldp_dl_iterate_phdr(int (*cb)(struct dl_phdr_info *, size_t, void *), void *data);
int ldp_dl_find_object(void *pc, struct dl_find_object *res);
void ldp_iterate_setup(void);
int ldp_real_iterate_phdr(int (*cb)(struct dl_phdr_info *, size_t, void *), void *data);
void ldp_dl_setup(void);
void ldp_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ldp_gdb_sync(void);              /* debugger.c */

/* ---- /proc/self/exe as the program's (procself.c) ---- */
void ldp_procself_setup(const char *path);
ssize_t ldp_readlink(const char *path, char *buf, size_t size);
ssize_t ldp_readlinkat(int dirfd, const char *path, char *buf, size_t size);
char *ldp_realpath(const char *path, char *resolved);
ssize_t ldp_readlink_chk(const char *path, char *buf, size_t size, size_t buflen);
ssize_t ldp_readlinkat_chk(int dirfd, const char *path, char *buf, size_t size, size_t buflen);
int ldp_execve(const char *path, char *const argv[], char *const envp[]);
int ldp_execv(const char *path, char *const argv[]);
int ldp_execvp(const char *file, char *const argv[]);
int ldp_execvpe(const char *file, char *const argv[], char *const envp[]);
int ldp_execl(const char *path, const char *arg0, ...);
int ldp_execlp(const char *file, const char *arg0, ...);
int ldp_execle(const char *path, const char *arg0, ...);
int ldp_posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                    const posix_spawnattr_t *attr, char *const argv[], char *const envp[]);
int ldp_posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                     const posix_spawnattr_t *attr, char *const argv[], char *const envp[]);
char *ldp_realpath_chk(const char *path, char *resolved, size_t resolvedlen);
int ldp_open(const char *path, int flags, ...);
int ldp_open64(const char *path, int flags, ...);
int ldp_openat(int dirfd, const char *path, int flags, ...);
int ldp_openat64(int dirfd, const char *path, int flags, ...);
int ldp_open_2(const char *path, int flags);
int ldp_open64_2(const char *path, int flags);
int ldp_openat_2(int dirfd, const char *path, int flags);
int ldp_openat64_2(int dirfd, const char *path, int flags);
struct _IO_FILE *ldp_fopen(const char *path, const char *mode);
struct _IO_FILE *ldp_fopen64(const char *path, const char *mode);

/* ---- backtrace_symbols naming pooled functions (backtrace.c) ---- */
char **ldp_backtrace_symbols(void *const *array, int size);
void ldp_backtrace_symbols_fd(void *const *array, int size, int fd);

/* ---- broker client (broker.c: the connection; lease.c: the program's lease) ---- */
extern int ldp_broker_fd, ldp_pool_fd;
extern int ldp_debug_mode;           /* --plan/--pool: no broker */
extern int ldp_keep_preload;         /* LD_PRELOAD stays with ld.so (interposers) */
int ldp_broker_connect(char *err, size_t errlen);
void *ldp_broker_acquire_program(const char *path, const char *argv0, size_t *len, int *connect_failed,
                                 char *err, size_t errlen);
/* NULL with *unserved = -1 when no broker can serve it (ld.so may load it instead) */
void *ldp_broker_acquire_library(const char *name, struct ldp_rt *requester, int mode, size_t *len,
                                 int *unserved, char *err, size_t errlen);
void ldp_broker_release(uint64_t lease, uint32_t first, uint32_t n);
uint64_t ldp_broker_pool_size(void);
extern const char *ldp_socket_opt;
int ldp_socket_path(char *out, size_t n);
int ldp_move_high(int fd);            /* to fds >= 1000, close-on-exec */
/* the ACQUIRE_PROGRAM payload (built once; the plan cache file's key) */
const void *ldp_broker_request(const char *path, const char *argv0, size_t *len);
/* fast path: connect and send HELLO + ACQUIRE_PROGRAM, replies read lazily;
 * -1 when no broker answers */
int ldp_broker_announce(const void *plan, size_t len, uint64_t epoch);
void ldp_broker_forget(void);
/* a program plan from the fast path carries lease 0 (the broker's reply is
 * read lazily): ldp_broker_release(0, ...) means the program's lease */

/* ---- start-up from a plan cache file, no broker round trip (fastpath.c) ---- */
struct stat;
/* The cached plan for this request with its images pinned and the pool
 * open (ldp_pool_fd), the broker told; NULL (why in `why`) to take the
 * slow path. */
void *ldp_fast_acquire(const char *path, const char *argv0, size_t *len, uint64_t *pool_size,
                       char *why, size_t whylen);
/* After ldp_plan_check: what the cache file cannot vouch for (files of
 * objects mapped wholly from the pool, the program's identity). */
int ldp_fast_check_plan(const struct ldp_plan *p, const struct stat *prog, char *why, size_t whylen);
/* Give the fast path up: pins, pool descriptor and connection dropped. */
void ldp_fast_abandon(void);
/* the pool's placement window when the fast path has read its header
 * (slots.c checks the stub region against it without reading it again) */
extern uint64_t ldp_window_lo, ldp_window_size;
extern int ldp_window_known;
/* the program's file as main.c opened it to classify it (-1: none): the
 * mapping of the main object uses it instead of opening the file again */
extern int ldp_prog_fd;

#endif
