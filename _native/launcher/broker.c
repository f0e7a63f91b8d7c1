/* Broker client (docs/protocol.md): frames of u32 length, u32 op, payload;
 * requests are NUL-terminated key=value strings.  HELLO brings the pool
 * descriptor (SCM_RIGHTS); the connection stays open, close-on-exec, for
 * the life of the process, since its closing releases our leases.  When
 * nobody answers, the embedded broker is started and asked again.  What
 * the connection is for (the program's lease, dlopen) is lease.c. */
#include "brokerwire.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
uint64_t br_epoch;
int br_conn_lost, br_own_pool_fd;
static uint64_t pool_size_from_hello;

void br_put(struct buf *b, const char *key, const char *val)
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
    if (s && *s) {   /* the usual case, without printf's deep stack */
        size_t l = strlen(s);
        if (l >= n) return -1;
        memcpy(out, s, l + 1);
        return 0;
    }
    if (x && *x) return snprintf(out, n, "%s/ldpool/broker.sock", x) >= (int)n ? -1 : 0;
    return snprintf(out, n, "/tmp/ldpool-%u/broker.sock", (unsigned)getuid()) >= (int)n ? -1 : 0;
}

int br_try_connect(const char *path)
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

int br_write_all(int fd, const void *p, size_t n)
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

/* Prepared frames in one write: every send wakes the broker up. */
int br_write_frames(const struct buf *frames, char *err, size_t errlen)
{
    if (br_write_all(ldp_broker_fd, frames->p, frames->n) < 0) {
        snprintf(err, errlen, "the broker closed the connection (%s)", strerror(errno));
        br_conn_lost = 1;
        return -1;
    }
    return 0;
}

int br_send(uint32_t op, struct buf *req, char *err, size_t errlen)
{
    struct buf f = {0};
    br_frame(&f, op, req);
    int r = br_write_frames(&f, err, errlen);
    free(f.p);
    return r;
}

/* The reply to request `op`; its payload is malloc'd (NUL-terminated beyond
 * its length).  A descriptor sent with the reply's first byte lands in *fdp. */
char *br_reply(uint32_t op, uint32_t *rop, size_t *rlen, int *fdp, char *err, size_t errlen)
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
        if (r <= 0) { snprintf(err, errlen, "the broker closed the connection"); br_conn_lost = 1; return NULL; }
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
        br_conn_lost = 1;
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

char *br_call(uint32_t op, struct buf *req, uint32_t *rop, size_t *rlen, int *fdp, char *err, size_t errlen)
{
    if (br_send(op, req, err, errlen) < 0) return NULL;
    return br_reply(op, rop, rlen, fdp, err, errlen);
}

static const char *kv(const char *p, size_t n, const char *key)
{
    size_t k = strlen(key);
    for (const char *s = p; s < p + n; s += strlen(s) + 1)
        if (strncmp(s, key, k) == 0 && s[k] == '=') return s + k + 1;
    return NULL;
}

int br_connect(char *err, size_t errlen)
{
    char sock[PATH_MAX];
    if (ldp_socket_path(sock, sizeof sock) < 0) { snprintf(err, errlen, "socket path too long"); return -1; }
    int fd = br_try_connect(sock);
    if (fd < 0 && (errno == ENOENT || errno == ECONNREFUSED)) {
        if (start_broker(sock, err, errlen) < 0) return -1;
        fd = br_try_connect(sock);
    }
    if (fd < 0) { snprintf(err, errlen, "cannot connect to the broker at %s: %s", sock, strerror(errno)); return -1; }
    ldp_broker_fd = fd;
    return 0;
}

void br_hello_payload(struct buf *b)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    br_put(b, "proto", "1");
    br_put(b, "kind", "process");
    br_put(b, "pid", pid);
    br_put(b, "name", ldp_progname);
}

int br_send_hello(char *err, size_t errlen)
{
    struct buf b = {0};
    br_hello_payload(&b);
    int r = br_send(OP_HELLO, &b, err, errlen);
    free(b.p);
    return r;
}

/* Append one frame (header + payload) to out. */
void br_frame(struct buf *out, uint32_t op, const struct buf *req)
{
    uint32_t hdr[2] = {(uint32_t)req->n, op};
    if (out->n + 8 + req->n > out->cap) out->p = realloc(out->p, out->cap = (out->n + 8 + req->n) * 2 + 256);
    memcpy(out->p + out->n, hdr, 8);
    memcpy(out->p + out->n + 8, req->p, req->n);
    out->n += 8 + req->n;
}

int br_recv_hello(char *err, size_t errlen)
{
    uint32_t op;
    size_t len;
    int pfd = -1;
    char *r = br_reply(OP_HELLO, &op, &len, &pfd, err, errlen);
    if (!r) {
        if (pfd >= 0) close(pfd);
        return -1;
    }
    const char *ps = kv(r, len, "pool_size");
    pool_size_from_hello = ps ? strtoull(ps, NULL, 10) : 0;
    const char *ep = kv(r, len, "epoch");
    br_epoch = ep ? strtoull(ep, NULL, 10) : 0;
    free(r);
    if (pfd < 0) { snprintf(err, errlen, "the broker sent no pool descriptor"); return -1; }
    if (br_own_pool_fd) {
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
    if (br_connect(err, errlen) < 0 || br_send_hello(err, errlen) < 0) return -1;
    return br_recv_hello(err, errlen);
}

uint64_t ldp_broker_pool_size(void) { return pool_size_from_hello; }
