/* ldpool-exec [--socket PATH] [--no-fallback] [--plan FILE --pool FILE] [--] PROG ARGS...
 *
 * Started by the system ld.so with only glibc's family loaded (hosted
 * mode), it gets a plan and the pool (from the broker, or from files in
 * the --plan debug mode), maps the program and its libraries from the pool,
 * applies the per-process fixups, runs the libraries' initialisers and
 * jumps to the program's entry point.  No Python runs in this process. */
#include "ldp.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* LDPOOL_TIMING=1: where the launcher's time goes, one line on stderr */
static int timing;
static double t_prev, t_acc[10];
static long f_prev, f_acc[10];   /* minor page faults: most of a phase's cost on a small program */
static const char *const t_names[10] = {"setup", "broker", "check", "glibc", "map", "imports", "fixups",
                                         "tls", "init"};

static void lap(int phase)
{
    if (!timing) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (phase >= 0) t_acc[phase] += now - t_prev, f_acc[phase] += ru.ru_minflt - f_prev;
    t_prev = now, f_prev = ru.ru_minflt;
}

static void report_timing(const char *route)
{
    if (!timing) return;
    char line[512];
    int n = snprintf(line, sizeof line, "ldpool-exec: timing (us):");
    for (int i = 0; i < 9; i++) n += snprintf(line + n, sizeof line - n, " %s=%.0f", t_names[i], t_acc[i]);
    n += snprintf(line + n, sizeof line - n, " path=%s faults:", route);
    for (int i = 0; i < 9; i++) n += snprintf(line + n, sizeof line - n, " %ld", f_acc[i]);
    snprintf(line + n, sizeof line - n, "\n");
    ssize_t w = write(2, line, strlen(line));
    (void)w;
}

static void usage(void)
{
    ldp_die(2, "usage: ldpool-exec [--socket PATH] [--no-fallback] [--plan FILE --pool FILE] [--] PROG ARGS...");
}

static void *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) ldp_die(127, "%s: %s", path, strerror(errno));
    char *b = malloc(st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, st.st_size - got);
        if (r <= 0) ldp_die(127, "%s: read error", path);
        got += r;
    }
    close(fd);
    *len = got;
    return b;
}

/* execvp's search, without its shell fallback */
static const char *find_program(const char *prog, char *buf, size_t n)
{
    if (strchr(prog, '/')) return prog;
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;; ) {
        const char *c = strchrnul(p, ':');
        snprintf(buf, n, "%.*s%s%s", (int)(c - p), p, c == p ? "" : "/", prog);
        struct stat st;   /* execvp goes on past a directory of that name */
        if (access(buf, X_OK) == 0 && stat(buf, &st) == 0 && S_ISREG(st.st_mode)) return buf;
        if (!*c) break;
        p = c + 1;
    }
    return NULL;
}

/* Plain ld.so (or the kernel, for a static program) for what cannot be
 * pooled, with a one-line notice. */
static void fallback(const char *path, char **argv, const char *why, int direct)
{
    ldp_note("note: running %s %s: %s", argv[0], direct ? "without ldpool" : "under ld.so", why);
    ldp_hosted_restore_env();
    const char *moved = getenv("LDPOOL_PRELOAD");   /* main's re-run set it aside */
    if (moved) {
        setenv("LD_PRELOAD", moved, 1);
        unsetenv("LDPOOL_PRELOAD");
    }
    /* the kernel starts its PT_INTERP (ld.so) as for a native run, not
     * `ld.so --argv0 ... PROG`: /proc/self/exe and the auxv then name the
     * program (gprofng's tools print their name from /proc/self/exe) */
    execv(path, argv);
    ldp_die(127, "%s: %s", path, strerror(errno));
}

/* What the kernel would do with the file: 0 = dynamic ELF (ours), 1 =
 * static ELF, 2 = #! script (interpreter line in interp), 3 = an ELF
 * program for another dynamic loader (reason in interp). */
static int classify(const char *path, char *interp, size_t n)
{
    unsigned char b[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) ldp_die(126, "%s: %s", path, strerror(errno));
    ssize_t got = pread(fd, b, sizeof b - 1, 0);
    ldp_prog_fd = fd;   /* mapping.c maps the program from it; closed once mapped */
    if (got >= 2 && b[0] == '#' && b[1] == '!') {
        b[got] = 0;
        char *nl = strchr((char *)b, '\n');
        if (!nl) ldp_die(126, "%s: #! line too long", path);
        *nl = 0;
        snprintf(interp, n, "%s", (char *)b + 2);
        return 2;
    }
    if (got < 4 || memcmp(b, ELFMAG, SELFMAG) != 0) ldp_die(126, "%s: not an ELF executable (Exec format error)", path);
    const Elf64_Ehdr *e = (const void *)b;
    if (got < (ssize_t)sizeof *e || e->e_ident[EI_CLASS] != ELFCLASS64 || e->e_machine != EM_X86_64)
        return 0;   /* the broker names the problem */
    if (e->e_phoff + (uint64_t)e->e_phnum * sizeof(Elf64_Phdr) > (uint64_t)got) return 0;
    const Elf64_Phdr *ph = (const void *)(b + e->e_phoff);
    for (int i = 0; i < e->e_phnum; i++) {
        if (ph[i].p_type != PT_INTERP) continue;
        /* another dynamic loader (musl, a sanitizer's...) is not ours to replace */
        if (ph[i].p_offset < (uint64_t)got && ph[i].p_filesz <= (uint64_t)got - ph[i].p_offset) {
            const char *in = (const char *)b + ph[i].p_offset;
            if (strncmp(in, "/lib64/ld-linux-x86-64.so.2", ph[i].p_filesz) != 0 &&
                strncmp(in, "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", ph[i].p_filesz) != 0) {
                snprintf(interp, n, "its interpreter is %.*s", (int)ph[i].p_filesz, in);
                return 3;
            }
        }
        return 0;
    }
    return 1;
}

/* A script: run its interpreter through the launcher, as execve would. */
static void run_script(char **argv, int i, char *line, const char *path)
{
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    char *interp = p;
    while (*p && *p != ' ' && *p != '\t') p++;
    char *arg = NULL;
    if (*p) {
        *p++ = 0;
        while (*p == ' ' || *p == '\t') p++;
        if (*p) {
            arg = p;
            char *end = p + strlen(p);
            while (end > p && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        }
    }
    int argc = 0;
    while (argv[argc]) argc++;
    char **v = malloc(sizeof *v * (argc + 4)), **o = v;
    for (int k = 0; k < i; k++) *o++ = argv[k];
    *o++ = interp;
    if (arg) *o++ = arg;
    *o++ = (char *)path;
    for (int k = i + 1; k < argc; k++) *o++ = argv[k];
    *o = NULL;
    execv("/proc/self/exe", v);
    ldp_die(127, "cannot re-run the launcher: %s", strerror(errno));
}

/* Does something ld.so preloaded into the launcher replace glibc internals? */
static int preload_interposes(void)
{
    static const char *const alloc[] = {"malloc", "free", "calloc", "realloc", "memalign", "posix_memalign",
                                        "aligned_alloc", "malloc_usable_size", NULL};
    static const char *const runtimes[] = {"__asan_init", "__tsan_init", "__msan_init", "__lsan_init",
                                           "__hwasan_init", NULL};
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    for (int i = 0; alloc[i]; i++)
        if (libc && dlsym(RTLD_DEFAULT, alloc[i]) != dlsym(libc, alloc[i])) return 1;
    for (int i = 0; runtimes[i]; i++)
        if (dlsym(RTLD_DEFAULT, runtimes[i])) return 1;
    return 0;
}

/* Broker errors that mean "ldpool cannot do this yet", not "this program
 * cannot run": those fall back to ld.so. */
static int unsupported(const char *err)
{
    return strstr(err, "not supported") || strstr(err, "unsupported") || strstr(err, "cannot be planned") ||
           strstr(err, "cannot be pooled");
}

int main(int argc, char **argv, char **envp)
{
    const char *planfile = NULL, *poolfile = NULL;
    int nofallback = 0, i = 1;
    /* A pooled program that executes /proc/self/exe reaches us with its own
     * argv: argv[0] names the program, not the launcher. */
    const char *a0 = strrchr(argv[0], '/');
    a0 = a0 ? a0 + 1 : argv[0];
    if (argv[0][0] && strcmp(a0, "ldpool-exec") != 0) i = 0;
    for (; i > 0 && i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--")) { i++; break; }
        if (!strcmp(argv[i], "--plan") && i + 1 < argc) planfile = argv[++i];
        else if (!strcmp(argv[i], "--pool") && i + 1 < argc) poolfile = argv[++i];
        else if (!strcmp(argv[i], "--socket") && i + 1 < argc) ldp_socket_opt = argv[++i];
        else if (!strcmp(argv[i], "--no-fallback")) nofallback = 1;
        else usage();
    }
    if (i >= argc || (!planfile != !poolfile)) usage();
    /* ld.so has already loaded LD_PRELOAD into the launcher; the program
     * must get them from the pool instead (once, in its own scope): start
     * again without them, remembering them for the plan and the program */
    const char *pre = getenv("LD_PRELOAD");
    if (pre && *pre && (ldp_hosted_active() || preload_interposes())) {
        /* a malloc replacement or sanitizer runtime: glibc is already bound
         * to it, so it stays with ld.so; pooled code binds to it through
         * dlvsym(RTLD_DEFAULT) like to any glibc symbol */
        ldp_keep_preload = 1;
    } else if (pre && *pre) {
        setenv("LDPOOL_PRELOAD", pre, 1);
        unsetenv("LD_PRELOAD");
        execv("/proc/self/exe", argv);
        ldp_die(127, "cannot re-run the launcher: %s", strerror(errno));
    }
    ldp_debug = getenv("LDPOOL_DEBUG") != NULL;
    timing = getenv("LDPOOL_TIMING") != NULL;
    lap(-1);
    ldp_tls_setup();
    ldp_iterate_setup();
    ldp_dl_setup();
    /* static, not on the stack: main's frame stays live under the program's
     * stack (start.c builds it below), so 12 KiB of buffers here would put
     * the program's first stack pages on pages nobody has touched yet */
    static char pbuf[PATH_MAX], abuf[PATH_MAX], interp[4096];
    const char *prog = argv[i];
    const char *path = find_program(prog, pbuf, sizeof pbuf);
    ldp_progname = prog;
    if (!path) ldp_die(127, "%s: command not found", prog);
    /* a shell puts the path of what it ran in $_: that was us (or `ldpool
     * run`); bash's own $_ starts from it */
    const char *us = getenv("_"), *ub = us ? strrchr(us, '/') : NULL;
    ub = ub ? ub + 1 : us;
    if (ub && (!strcmp(ub, "ldpool-exec") || !strcmp(ub, "ldpool"))) setenv("_", path, 1);
    struct stat st;
    if (stat(path, &st) < 0) ldp_die(127, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) ldp_die(126, "%s: not a regular file", path);
    /* a drop-in prefix refuses what execve would (an explicit ld.so would run it) */
    if (access(path, X_OK) < 0) ldp_die(126, "%s: %s", path, strerror(errno));
    ldp_argc = argc - i;
    ldp_argv = argv + i;
    const char *execfn = path;   /* as execve would have been given it */
    int kind = classify(path, interp, sizeof interp);
    if (kind == 2) run_script(argv, i, interp, path);
    const char *direct = kind == 1 ? "a static program" : kind == 3 ? interp : NULL;
    if (!direct && (st.st_mode & (S_ISUID | S_ISGID))) direct = "set-user-ID or set-group-ID program";
    if (direct) {
        /* the kernel (and that program's own loader) must run it */
        if (nofallback) ldp_die(127, "%s cannot be run from the pool: %s", path, direct);
        fallback(path, argv + i, direct, 1);
    }
    const char *env_unsupported = getenv("LD_AUDIT") ? "LD_AUDIT is set" : getenv("LD_PROFILE") ? "LD_PROFILE is set" : NULL;
    if (env_unsupported) {
        if (nofallback) ldp_die(127, "%s cannot be run from the pool: %s", path, env_unsupported);
        fallback(path, argv + i, env_unsupported, 0);
    }

    char err[1024];
    size_t len;
    void *buf;
    uint64_t pool_size = 0;
    /* the plan cache file first (fastpath.c): no broker round trip; the
     * broker path when it cannot be used, from any step up to mapping */
    int fast = !planfile && !getenv("LDPOOL_NO_FASTPATH");
    const char *route = planfile ? "file" : "slow";
    struct ldp_plan *p = malloc(sizeof *p);
    int ok, mapped;
    lap(0);
again:
    if (planfile) {
        ldp_debug_mode = 1;
        buf = read_file(planfile, &len);
        ldp_pool_fd = open(poolfile, O_RDONLY | O_CLOEXEC);
        if (ldp_pool_fd < 0 || fstat(ldp_pool_fd, &st) < 0) ldp_die(127, "%s: %s", poolfile, strerror(errno));
        pool_size = st.st_size;
    } else {
        if (path[0] != '/') {
            if (!getcwd(abuf, sizeof abuf) || strlen(abuf) + strlen(path) + 2 > sizeof abuf)
                ldp_die(127, "%s: path too long", path);
            strcat(strcat(abuf, "/"), path);
            path = abuf;
        }
        buf = fast ? ldp_fast_acquire(path, prog, &len, &pool_size, err, sizeof err) : NULL;
        if (buf) {
            route = "fast";
        } else {
            if (fast && ldp_debug) ldp_note("note: slow path: %s", err);
            fast = 0;
            route = "slow";
            int unreachable;
            buf = ldp_broker_acquire_program(path, prog, &len, &unreachable, err, sizeof err);
            if (!buf && (unreachable || unsupported(err)) && !nofallback) fallback(path, argv + i, err, 0);
            if (!buf) ldp_die(ldp_version_error(err) ? 1 : 127, "%s", err);
            pool_size = ldp_broker_pool_size();
        }
    }
    lap(1);
    ok = ldp_plan_check(p, buf, len, pool_size, err, sizeof err);
    if (fast && (ok < 0 || ldp_fast_check_plan(p, &st, err, sizeof err) < 0)) {
        if (ldp_debug) ldp_note("note: slow path: %s", ok < 0 ? "bad plan in the plan cache file" : err);
        ldp_fast_abandon();
        fast = 0;
        goto again;
    }
    if (ok == -2 && !nofallback && !planfile) fallback(path, argv + i, err, 0);
    if (ok < 0) ldp_die(127, "%s%s", ok == -2 ? "" : "bad plan: ", err);
    lap(2);
    if (p->h->first_index != 0) ldp_die(127, "bad plan: not a program plan");
    ldp_hosted_preload(p, argv);   /* an allocator library ld.so must load first */
    for (uint32_t k = 0; k < p->h->nglibc; k++) {
        const char *g = ldp_str(p, p->glibc[k]);
        /* the launcher's own libc is loaded and global already: a dlopen
         * would only count a reference (and cost a fault and the loader lock) */
        if (strcmp(g, "libc.so.6") != 0 && !dlopen(g, RTLD_NOW | RTLD_GLOBAL)) ldp_die(127, "%s", dlerror());
    }
    lap(3);
    ldp_objects_add(p);
    mapped = ldp_map_plan(p, ldp_pool_fd, err, sizeof err);
    if (mapped < 0 && fast) {
        /* nothing of the plan stays mapped: the broker's plan may do */
        if (ldp_debug) ldp_note("note: slow path: %s", err);
        ldp_nobj = 0;
        ldp_main = LDP_NONE;
        ldp_fast_abandon();
        fast = 0;
        goto again;
    }
    if (mapped < 0) {
        /* nothing of the program runs yet: ld.so can still take over,
         * unless a library changed under the plan (-2): that is an error */
        if (mapped == -1 && !nofallback && !planfile) fallback(path, argv + i, err, 0);
        ldp_die(127, "%s", err);
    }
    if (ldp_prog_fd >= 0) close(ldp_prog_fd);   /* a plan mapping nothing from the file */
    ldp_prog_fd = -1;
    const char **keep[] = {&path, &execfn, &ldp_socket_opt, &planfile, &poolfile};
    ldp_move_args(argv, i, argc, keep, 5);
    ldp_progname = prog = argv[i];
    ldp_set_identity(path);
    ldp_procself_setup(path);
    lap(4);
    if (ldp_resolve_imports(p, err, sizeof err) < 0) ldp_die(127, "%s", err);
    lap(5);
    if (ldp_apply_fixups(p, err, sizeof err) < 0) ldp_die(127, "%s", err);
    ldp_protect_plan(p);
    lap(6);
    if (ldp_tls_install(p, err, sizeof err) < 0) ldp_die(127, "%s", err);
    for (uint32_t k = 0; k < p->h->nobj; k++) ldp_objs[k]->refcount = 1;
    ldp_gdb_sync();
    lap(7);
    ldp_run_inits(p, ldp_argc, ldp_argv, environ);
    lap(8);
    report_timing(route);
    ldp_hosted_restore_env();
    const char *moved = getenv("LDPOOL_PRELOAD");
    if (moved) {
        setenv("LD_PRELOAD", moved, 1);
        unsetenv("LDPOOL_PRELOAD");
    }
    ldp_start(ldp_argc, ldp_argv, envp, execfn);
}
