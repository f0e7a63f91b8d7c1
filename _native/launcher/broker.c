/* Broker client (docs/protocol.md): frames of u32 length, u32 op, payload;
 * requests are NUL-terminated key=value strings.  HELLO brings the pool
 * descriptor (SCM_RIGHTS); the connection stays open, close-on-exec, for
 * the life of the process, since its closing releases our leases.  When
 * nobody answers, the embedded broker is started and asked again.
 *
 * A start from a plan cache file (fastpath.c) sends HELLO and
 * ACQUIRE_PROGRAM without waiting: their replies are read when the lease
 * is first needed (dlopen, a reconnection), see settle(). */
#include "ldp.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

int ldp_broker_fd = -1, ldp_pool_fd = -1;
int ldp_debug_mode;
int ldp_keep_preload;
const char *ldp_socket_opt;
static uint64_t pool_size_from_hello, epoch;
static int conn_lost;            /* the last call failed because the connection broke */
static uint64_t lease;           /* of our program; 0 while unknown (or refused) */
static int replies_pending;      /* HELLO + ACQUIRE_PROGRAM sent by the fast path, replies unread */
static const void *fast_plan;    /* the plan the fast path runs on (to compare with the broker's) */
static size_t fast_len;
static int own_pool_fd;          /* ldp_pool_fd is our own open (it holds the pins): keep it */
static void settle_before_fork(void);

#define OP_HELLO 1
#define OP_ACQ_PROGRAM 2
#define OP_ACQ_LIBRARY 3
#define OP_RELEASE 4
#define OP_RECLAIM 7
#define OP_ERROR 0x1FF
#define MAX_FRAME (64u << 20)

struct buf { char *p; size_t n, cap; };
static struct buf program_req;   /* the ACQUIRE_PROGRAM keys, sent again with RECLAIM */
static int program_req_built;

static void put_frame(struct buf *out, uint32_t op, const struct buf *req);

static void put(struct buf *b, const char *key, const char *val)
{
    size_t k = strlen(key), v = strlen(val);
    if (b->n + k + v + 2 > b->cap) b->p = realloc(b->p, b->cap = (b->n + k + v + 2) * 2 + 256);
    memcpy(b->p + b->n, key, k);
    b->p[b->n + k] = '=';
    memcpy(b->p + b->n + k + 1, val, v + 1);
    b->n += k + v + 2;
}

/* Keep our descriptors out of the way of programs that expect the lowest
 * free numbers (open() returning 3...). */
int ldp_move_high(int fd)
{
    static int lo;
    struct rlimit rl;
    if (!lo) {
        lo = 1000;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1100) lo = rl.rlim_cur > 64 ? rl.rlim_cur - 40 : 3;
    }
    int nfd = fcntl(fd, F_DUPFD_CLOEXEC, lo);
    if (nfd < 0) return fd;
    close(fd);
    return nfd;
}

int ldp_socket_path(char *out, size_t n)
{
    const char *s = ldp_socket_opt ? ldp_socket_opt : getenv("LDPOOL_SOCKET");
    const char *x = getenv("XDG_RUNTIME_DIR");
    if (s && *s) return snprintf(out, n, "%s", s) >= (int)n ? -1 : 0;
    if (x && *x) return snprintf(out, n, "%s/ldpool/broker.sock", x) >= (int)n ? -1 : 0;
    return snprintf(out, n, "/tmp/ldpool-%u/broker.sock", (unsigned)getuid()) >= (int)n ? -1 : 0;
}

static int try_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    fd = ldp_move_high(fd);     /* before connecting: the request follows connect() at once */
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* ldpool next to ldpool-exec, else on PATH */
static int start_broker(const char *sock, char *err, size_t errlen)
{
    char self[PATH_MAX], ldpool[PATH_MAX + 8];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    const char *prog = "ldpool";
    if (n > 0) {
        self[n] = 0;
        char *s = strrchr(self, '/');
        if (s) {
            *s = 0;
            snprintf(ldpool, sizeof ldpool, "%s/ldpool", self);
            if (access(ldpool, X_OK) == 0) prog = ldpool;
        }
    }
    /* its stderr comes back through a pipe: our message stays one line */
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) { snprintf(err, errlen, "cannot start the broker: %s", strerror(errno)); return -1; }
    pid_t pid = fork();
    if (pid < 0) { snprintf(err, errlen, "cannot start the broker: %s", strerror(errno)); return -1; }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) { dup2(nul, 0); dup2(nul, 1); }
        dup2(pfd[1], 2);
        execlp(prog, prog, "broker", "--detach", "--idle-exit", "30", "--socket", sock, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char out[2048], chunk[1024];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(pfd[0], chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (got + r > sizeof out - 1) {          /* keep the tail: the last line names the problem */
            size_t drop = got + r - (sizeof out - 1);
            if (drop > got) drop = got;
            memmove(out, out + drop, got - drop);
            got -= drop;
        }
        memcpy(out + got, chunk, r);
        got += r;
    }
    close(pfd[0]);
    out[got] = 0;
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        while (got && (out[got - 1] == '\n' || out[got - 1] == ' ')) out[--got] = 0;
        char *last = strrchr(out, '\n');
        last = last ? last + 1 : out;
        snprintf(err, errlen, "cannot start the broker for %s%s%s", sock, *last ? ": " : "", last);
        return -1;
    }
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);   /* a dead broker must not SIGPIPE the program */
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p = (const char *)p + w, n -= w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p = (char *)p + r, n -= r;
    }
    return 0;
}

/* One frame in one send: every send wakes the broker up. */
static int send_req(uint32_t op, struct buf *req, char *err, size_t errlen)
{
    struct buf f = {0};
    put_frame(&f, op, req);
    int r = write_all(ldp_broker_fd, f.p, f.n);
    free(f.p);
    if (r < 0) {
        snprintf(err, errlen, "the broker closed the connection (%s)", strerror(errno));
        conn_lost = 1;
        return -1;
    }
    return 0;
}

/* The reply to request `op`; its payload is malloc'd (NUL-terminated beyond
 * its length).  A descriptor sent with the reply's first byte lands in *fdp. */
static char *recv_reply(uint32_t op, uint32_t *rop, size_t *rlen, int *fdp, char *err, size_t errlen)
{
    uint32_t hdr[2];
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {hdr, 8};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    size_t got = 0;
    while (got < 8) {
        iov.iov_base = (char *)hdr + got, iov.iov_len = 8 - got;
        ssize_t r = recvmsg(ldp_broker_fd, &m, MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { snprintf(err, errlen, "the broker closed the connection"); conn_lost = 1; return NULL; }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && fdp) memcpy(fdp, CMSG_DATA(c), sizeof(int));
        m.msg_control = NULL, m.msg_controllen = 0;
        got += r;
    }
    if (hdr[0] > MAX_FRAME) { snprintf(err, errlen, "the broker sent a %u-byte frame", hdr[0]); return NULL; }
    char *p = malloc(hdr[0] + 1);
    if (read_all(ldp_broker_fd, p, hdr[0]) < 0) {
        free(p);
        snprintf(err, errlen, "the broker closed the connection mid-reply");
        conn_lost = 1;
        return NULL;
    }
    p[hdr[0]] = 0;
    *rop = hdr[1], *rlen = hdr[0];
    if (hdr[1] == OP_ERROR) {
        snprintf(err, errlen, "%s", p);
        free(p);
        return NULL;
    }
    if (hdr[1] != (op | 0x100)) {
        snprintf(err, errlen, "the broker answered op %#x to op %#x", hdr[1], op);
        free(p);
        return NULL;
    }
    return p;
}

static char *call(uint32_t op, struct buf *req, uint32_t *rop, size_t *rlen, int *fdp, char *err, size_t errlen)
{
    if (send_req(op, req, err, errlen) < 0) return NULL;
    return recv_reply(op, rop, rlen, fdp, err, errlen);
}

static const char *kv(const char *p, size_t n, const char *key)
{
    size_t k = strlen(key);
    for (const char *s = p; s < p + n; s += strlen(s) + 1)
        if (strncmp(s, key, k) == 0 && s[k] == '=') return s + k + 1;
    return NULL;
}

static int connect_socket(char *err, size_t errlen)
{
    char sock[PATH_MAX];
    if (ldp_socket_path(sock, sizeof sock) < 0) { snprintf(err, errlen, "socket path too long"); return -1; }
    int fd = try_connect(sock);
    if (fd < 0 && (errno == ENOENT || errno == ECONNREFUSED)) {
        if (start_broker(sock, err, errlen) < 0) return -1;
        fd = try_connect(sock);
    }
    if (fd < 0) { snprintf(err, errlen, "cannot connect to the broker at %s: %s", sock, strerror(errno)); return -1; }
    ldp_broker_fd = fd;
    return 0;
}

static void hello_payload(struct buf *b)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    put(b, "proto", "1");
    put(b, "kind", "process");
    put(b, "pid", pid);
    put(b, "name", ldp_progname);
}

static int send_hello(char *err, size_t errlen)
{
    struct buf b = {0};
    hello_payload(&b);
    int r = send_req(OP_HELLO, &b, err, errlen);
    free(b.p);
    return r;
}

/* Append one frame (header + payload) to out. */
static void put_frame(struct buf *out, uint32_t op, const struct buf *req)
{
    uint32_t hdr[2] = {(uint32_t)req->n, op};
    if (out->n + 8 + req->n > out->cap) out->p = realloc(out->p, out->cap = (out->n + 8 + req->n) * 2 + 256);
    memcpy(out->p + out->n, hdr, 8);
    memcpy(out->p + out->n + 8, req->p, req->n);
    out->n += 8 + req->n;
}

static int recv_hello(char *err, size_t errlen)
{
    uint32_t op;
    size_t len;
    int pfd = -1;
    char *r = recv_reply(OP_HELLO, &op, &len, &pfd, err, errlen);
    if (!r) {
        if (pfd >= 0) close(pfd);
        return -1;
    }
    const char *ps = kv(r, len, "pool_size");
    pool_size_from_hello = ps ? strtoull(ps, NULL, 10) : 0;
    const char *ep = kv(r, len, "epoch");
    epoch = ep ? strtoull(ep, NULL, 10) : 0;
    free(r);
    if (pfd < 0) { snprintf(err, errlen, "the broker sent no pool descriptor"); return -1; }
    if (own_pool_fd) {
        /* ours holds the pins (and is its own open file description) */
        close(pfd);
        return 0;
    }
    if (ldp_pool_fd >= 0) close(ldp_pool_fd);   /* a reconnection: the same pool, opened again */
    ldp_pool_fd = ldp_move_high(pfd);
    return 0;
}

int ldp_broker_connect(char *err, size_t errlen)
{
    if (connect_socket(err, errlen) < 0 || send_hello(err, errlen) < 0) return -1;
    return recv_hello(err, errlen);
}

uint64_t ldp_broker_pool_size(void) { return pool_size_from_hello; }

static uint64_t plan_lease(const void *plan, size_t len)
{
    uint64_t l = 0;
    if (len >= sizeof(struct ldp_plan_hdr))
        memcpy(&l, (const char *)plan + offsetof(struct ldp_plan_hdr, lease), sizeof l);
    return l;
}

/* The same plan but for the lease field (the broker's answer to what the
 * fast path ran on). */
static int same_plan(const void *a, size_t alen, const void *b, size_t blen)
{
    size_t off = offsetof(struct ldp_plan_hdr, lease), end = off + sizeof(uint64_t);
    return alen == blen && alen >= end && memcmp(a, b, off) == 0 &&
           memcmp((const char *)a + end, (const char *)b + end, alen - end) == 0;
}

/* The ACQUIRE_PROGRAM payload, built once: the fast path's cache file is
 * named after it and must hold exactly these bytes, and RECLAIM repeats
 * it.  Keys in a stable order (env= in the order of environ), so repeated
 * starts hit the broker's cache. */
const void *ldp_broker_request(const char *path, const char *argv0, size_t *len)
{
    if (!program_req_built) {
        struct buf b = {0};
        char cwd[PATH_MAX];
        put(&b, "path", path);
        put(&b, "argv0", argv0);
        put(&b, "cwd", getcwd(cwd, sizeof cwd) ? cwd : "/");
        for (char **e = environ; *e; e++)
            if (strncmp(*e, "LD_", 3) == 0 && !(ldp_keep_preload && strncmp(*e, "LD_PRELOAD=", 11) == 0))
                put(&b, "env", *e);
        const char *pre = getenv("LDPOOL_PRELOAD");
        if (pre) {
            char *v = malloc(strlen(pre) + 12);
            strcat(strcpy(v, "LD_PRELOAD="), pre);
            put(&b, "env", v);
            free(v);
        }
        program_req = b;
        program_req_built = 1;
    }
    *len = program_req.n;
    return program_req.p;
}

/* HELLO and ACQUIRE_PROGRAM as one write (every send wakes the broker). */
static int send_program_pair(char *err, size_t errlen)
{
    struct buf h = {0}, out = {0};
    hello_payload(&h);
    put_frame(&out, OP_HELLO, &h);
    put_frame(&out, OP_ACQ_PROGRAM, &program_req);
    free(h.p);
    int w = write_all(ldp_broker_fd, out.p, out.n);
    free(out.p);
    if (w < 0) {
        snprintf(err, errlen, "the broker closed the connection (%s)", strerror(errno));
        conn_lost = 1;
        return -1;
    }
    return 0;
}

/* HELLO and ACQUIRE_PROGRAM in one write, prepared before connecting: the
 * broker finds both when it accepts the connection and answers them in one
 * wakeup, and the start-up pays one round trip instead of two.
 * Returns NULL with *connect_failed set when no broker could be reached. */
void *ldp_broker_acquire_program(const char *path, const char *argv0, size_t *len, int *connect_failed,
                                 char *err, size_t errlen)
{
    *connect_failed = 1;
    size_t n;
    ldp_broker_request(path, argv0, &n);
    if (connect_socket(err, errlen) < 0 || send_program_pair(err, errlen) < 0 || recv_hello(err, errlen) < 0)
        return NULL;
    *connect_failed = 0;
    uint32_t op;
    void *r = recv_reply(OP_ACQ_PROGRAM, &op, len, NULL, err, errlen);
    if (r) lease = plan_lease(r, *len);
    return r;
}

/* The fast path: tell the broker we run `plan` (connect and send, no
 * waiting; the pool descriptor is already ours).  -1 when no broker
 * answers: the slow path starts one. */
int ldp_broker_announce(const void *plan, size_t len, uint64_t plan_epoch)
{
    char sock[PATH_MAX], err[256];
    if (ldp_socket_path(sock, sizeof sock) < 0) return -1;
    int fd = try_connect(sock);
    if (fd < 0) return -1;
    ldp_broker_fd = fd;
    if (send_program_pair(err, sizeof err) < 0) {
        ldp_broker_forget();
        return -1;
    }
    replies_pending = 1;
    static int atfork;
    if (!atfork++) pthread_atfork(settle_before_fork, NULL, NULL);
    fast_plan = plan, fast_len = len;
    own_pool_fd = 1;
    epoch = plan_epoch;
    return 0;
}

/* The fast path gave up (its plan could not be used): drop the connection
 * (the broker releases what it granted) before the slow path starts. */
void ldp_broker_forget(void)
{
    if (ldp_broker_fd >= 0) close(ldp_broker_fd);
    ldp_broker_fd = -1;
    replies_pending = 0;
    fast_plan = NULL;
    own_pool_fd = 0;
    conn_lost = 0;
}

/* The fast path's pending replies: the lease, if the broker granted the
 * very plan we run.  An error or another plan (files changed meanwhile)
 * leaves us without a lease: our pins keep our images alive, dlopen goes
 * to ld.so.  -1 only when the connection broke (reconnect). */
static pthread_mutex_t settle_lock = PTHREAD_MUTEX_INITIALIZER;

static int settle_locked(char *err, size_t errlen)
{
    if (!replies_pending) return 0;
    replies_pending = 0;
    uint64_t plan_epoch = epoch;
    int hello_ok = recv_hello(err, errlen) == 0 && epoch == plan_epoch;
    epoch = plan_epoch;          /* our mappings' epoch, whatever this broker's is */
    if (conn_lost) return -1;
    uint32_t op;
    size_t len;
    void *r = recv_reply(OP_ACQ_PROGRAM, &op, &len, NULL, err, errlen);
    if (!r) {
        if (ldp_debug) ldp_note("note: the broker refused the cached plan's program: %s", err);
        return conn_lost ? -1 : 0;
    }
    if (hello_ok && same_plan(r, len, fast_plan, fast_len)) lease = plan_lease(r, len);
    else if (ldp_debug) ldp_note("note: the broker's plan differs from the cached one: running without a lease");
    free(r);
    return 0;
}

static int settle(char *err, size_t errlen)
{
    pthread_mutex_lock(&settle_lock);
    int r = settle_locked(err, errlen);
    pthread_mutex_unlock(&settle_lock);
    return r;
}

/* A fork would leave both processes expecting the same pending replies on
 * the one connection they share: read them before.  A broker that does not
 * answer within a few seconds loses us (dlopen then goes to ld.so; the pins
 * keep our images). */
static void settle_before_fork(void)
{
    char err[256];
    pthread_mutex_lock(&settle_lock);
    if (replies_pending) {
        struct pollfd pf = {.fd = ldp_broker_fd, .events = POLLIN};
        int n;
        while ((n = poll(&pf, 1, 5000)) < 0 && errno == EINTR) {}
        if (n == 1) {
            settle_locked(err, sizeof err);
        } else {
            if (ldp_debug) ldp_note("note: no answer from the broker before fork(): going on without it");
            close(ldp_broker_fd);
            ldp_broker_fd = -1;
            replies_pending = 0;
        }
    }
    pthread_mutex_unlock(&settle_lock);
}

/* After a broker restart: connect again and take our lease back (RECLAIM),
 * so that dlopen keeps working and our images keep their references.  The
 * mappings never depended on the broker; a new epoch means new placements
 * that may clash with ours, so then we stay without a broker.  A fast-path
 * start that never learnt its lease acquires the program again and keeps
 * the lease only if the plan is the one it runs. */
static int reconnect(char *err, size_t errlen)
{
    uint64_t old_epoch = epoch;
    close(ldp_broker_fd);
    ldp_broker_fd = -1;
    conn_lost = 0;
    replies_pending = 0;
    if (connect_socket(err, errlen) < 0 || send_hello(err, errlen) < 0 || recv_hello(err, errlen) < 0) return -1;
    if (epoch != old_epoch) {
        snprintf(err, errlen, "the broker restarted with a new epoch; dlopen through it is not possible");
        return -1;
    }
    uint32_t op;
    size_t len;
    const struct ldp_plan *mine = ldp_objs[ldp_main]->plan;
    if (!lease) {
        char *r = call(OP_ACQ_PROGRAM, &program_req, &op, &len, NULL, err, errlen);
        if (r && same_plan(r, len, mine->buf, mine->len)) lease = plan_lease(r, len);
        else if (r) snprintf(err, errlen, "the broker's plan for the program changed; dlopen through it is not possible");
        free(r);
        return lease ? 0 : -1;
    }
    struct buf b = {0};
    char num[32];
    snprintf(num, sizeof num, "%lu", lease);
    put(&b, "lease", num);
    snprintf(num, sizeof num, "%lu", epoch);
    put(&b, "epoch", num);
    for (uint32_t i = 0; i < ldp_nobj; i++) {
        /* 0 for a dlclose'd object: the lease dropped it (protocol.md) */
        snprintf(num, sizeof num, "0x%lx", ldp_objs[i] && ldp_objs[i]->state != LDP_ST_GONE ? ldp_objs[i]->o->map_start : 0);
        put(&b, "addr", num);
    }
    /* the program as we acquired it: the broker resolves it again for dlopen */
    if (b.n + program_req.n > b.cap) b.p = realloc(b.p, b.cap = b.n + program_req.n);
    if (program_req.n) memcpy(b.p + b.n, program_req.p, program_req.n);
    b.n += program_req.n;
    char *r = call(OP_RECLAIM, &b, &op, &len, NULL, err, errlen);
    free(b.p);
    free(r);
    return r ? 0 : -1;
}

void *ldp_broker_acquire_library(const char *name, struct ldp_rt *requester, int mode, size_t *len,
                                 int *unserved, char *err, size_t errlen)
{
    *unserved = 0;
    if (settle(err, errlen) < 0 && reconnect(err, errlen) < 0) {
        *unserved = -1;
        return NULL;
    }
    if (!lease) {
        snprintf(err, errlen, "no lease from the broker for this program");
        *unserved = -1;
        return NULL;
    }
    struct buf b = {0};
    char num[32];
    snprintf(num, sizeof num, "%lu", lease);
    put(&b, "lease", num);
    put(&b, "name", name);
    put(&b, "requester", requester ? requester->path : ldp_objs[ldp_main]->path);
    snprintf(num, sizeof num, "%d", mode);
    put(&b, "flags", num);
    uint32_t op;
    char *r = call(OP_ACQ_LIBRARY, &b, &op, len, NULL, err, errlen);
    if (!r && conn_lost && reconnect(err, errlen) == 0)
        r = call(OP_ACQ_LIBRARY, &b, &op, len, NULL, err, errlen);
    free(b.p);
    /* no broker, or one that cannot serve this lease: ld.so can still load it */
    *unserved = !r && (conn_lost || ldp_broker_fd < 0 || strstr(err, "not supported")) ? -1 : 0;
    return r;
}

void ldp_broker_release(uint64_t lease_id, uint32_t first, uint32_t n)
{
    char err[256];
    if (ldp_broker_fd < 0 || settle(err, sizeof err) < 0) return;
    struct buf b = {0};
    char num[32];
    snprintf(num, sizeof num, "%lu", lease_id ? lease_id : lease);
    put(&b, "lease", num);
    for (uint32_t i = 0; i < n; i++) {
        snprintf(num, sizeof num, "%u", first + i);
        put(&b, "object", num);
    }
    uint32_t op;
    size_t len;
    free(call(OP_RELEASE, &b, &op, &len, NULL, err, sizeof err));
    free(b.p);
}
