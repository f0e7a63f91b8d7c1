/* A lean load generator for the broker's latency benchmark
 * (benchmarks/bench_broker.py builds it with cc): N client processes, each
 * on its own connection, time ACQUIRE_PROGRAM + RELEASE round trips of one
 * program, back to back or paced, as ldpool-exec would send them.  The
 * Python clients cost each round trip ~20 us of client CPU; with 64 of them
 * on 2 cores that, not the broker, sets the closed-loop figures.
 *
 *   broker_load SOCKET PROGRAM CLIENTS ROUNDS PACE_US OUT [connect]
 *
 * With "connect", every round is one program start as ldpool-exec makes
 * it: a new connection, HELLO and ACQUIRE_PROGRAM in one write, both
 * replies read, close (the close releases the lease); the latency is from
 * connect() to the plan.
 *
 * PACE_US 0: back to back; else an exponential pause of that mean between
 * round trips.  OUT receives CLIENTS x ROUNDS little-endian u64 latencies
 * in nanoseconds (one acquire + release each).  Exit 0, or 1 with a line on
 * stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LEASE_OFF 136        /* struct ldp_plan_hdr: u64 lease */
#define REPLY_ERROR 0x1FF

static char buf[1 << 20];

static void die(const char *what) {
    fprintf(stderr, "broker_load: %s: %s\n", what, strerror(errno));
    _exit(1);
}

static size_t frame(char *out, uint32_t op, const char *payload, size_t n) {
    uint32_t h[2] = {(uint32_t)n, op};
    memcpy(out, h, 8);
    memcpy(out + 8, payload, n);
    return n + 8;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += k, n -= (size_t)k;
    }
}

/* one reply frame into buf; returns its payload length.  Bytes read past
 * it (a pipelined reply) are kept for the next call. */
static size_t extra;              /* bytes of the next frame(s) after the current one */
static size_t cur;                /* length of the frame at buf */

static uint32_t recv_reply(int fd) {
    if (extra) memmove(buf, buf + cur, extra);
    size_t got = extra, want = 8;
    extra = 0;
    for (;;) {
        if (got >= 8) {
            uint32_t len;
            memcpy(&len, buf, 4);
            want = 8 + (size_t)len;
            if (want > sizeof buf) { errno = EMSGSIZE; die("reply"); }
        }
        if (got >= want) break;
        /* poll, not a blocking read: a reader asleep in read() is woken (for
         * nothing) when the broker consumes our request and frees its buffer */
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) die("poll");
        ssize_t k = read(fd, buf + got, sizeof buf - got);
        if (k <= 0) {
            if (k < 0 && errno == EINTR) continue;
            errno = k ? errno : ECONNRESET;
            die("read");
        }
        got += (size_t)k;
    }
    cur = want;
    extra = got - want;
    uint32_t h[2];
    memcpy(h, buf, 8);
    if (h[1] == REPLY_ERROR) {
        fprintf(stderr, "broker_load: broker error: %.*s\n", (int)h[0], buf + 8);
        _exit(1);
    }
    return h[0];
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* go[0]: the start signal; go[1]: clients connected and warmed up */
static int dial(const char *sock) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (fd < 0) die("socket");
    snprintf(a.sun_path, sizeof a.sun_path, "%s", sock);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    return fd;
}

static void client(const char *sock, const char *prog, int rounds, double pace_us,
                   uint64_t *out, int *go, unsigned seed, int per_start) {
    static char hello_kv[] = "proto=1\0kind=guest\0name=broker_load\0";
    char start[8192 + 128], acq[8192], rel[64], kv[8192];
    size_t hello_len = frame(start, 1, hello_kv, sizeof hello_kv - 1);
    int fd = per_start ? -1 : dial(sock);
    if (!per_start) {
        send_all(fd, start, hello_len);
        recv_reply(fd);
    }
    size_t n = (size_t)snprintf(kv, sizeof kv, "path=%s", prog) + 1;
    n += (size_t)snprintf(kv + n, sizeof kv - n, "argv0=%s", prog) + 1;
    n += (size_t)snprintf(kv + n, sizeof kv - n, "cwd=/") + 1;
    size_t acq_len = frame(acq, 2, kv, n);
    memcpy(start + hello_len, acq, acq_len);
    srand48(seed);
    for (int i = -1; i < rounds; i++) {    /* round -1: warm-up, before the start signal */
        if (i == 0) {
            __atomic_fetch_add(&go[1], 1, __ATOMIC_SEQ_CST);
            while (!__atomic_load_n(&go[0], __ATOMIC_SEQ_CST)) usleep(1000);
        }
        if (i >= 0 && pace_us > 0) usleep((useconds_t)(-log(1.0 - drand48()) * pace_us));
        uint64_t t0 = now_ns();
        if (per_start) {                   /* as ldpool-exec: HELLO + ACQUIRE in one write */
            fd = dial(sock);
            send_all(fd, start, hello_len + acq_len);
            recv_reply(fd);
            if (recv_reply(fd) < LEASE_OFF + 8) { errno = EPROTO; die("plan"); }
            if (i >= 0) out[i] = now_ns() - t0;
            close(fd);
            extra = 0;
            continue;
        }
        send_all(fd, acq, acq_len);
        if (recv_reply(fd) < LEASE_OFF + 8) { errno = EPROTO; die("plan"); }
        uint64_t lease;
        memcpy(&lease, buf + 8 + LEASE_OFF, 8);
        char lkv[32];
        size_t ln = (size_t)snprintf(lkv, sizeof lkv, "lease=%llu", (unsigned long long)lease) + 1;
        send_all(fd, rel, frame(rel, 4, lkv, ln));
        recv_reply(fd);
        if (i >= 0) out[i] = now_ns() - t0;
    }
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
    int per_start = argc == 8 && strcmp(argv[7], "connect") == 0;
    if (argc != 7 && !per_start) {
        fprintf(stderr, "usage: broker_load SOCKET PROGRAM CLIENTS ROUNDS PACE_US OUT [connect]\n");
        return 1;
    }
    int nc = atoi(argv[3]), rounds = atoi(argv[4]);
    double pace = atof(argv[5]);
    if (nc <= 0 || rounds <= 0) { fprintf(stderr, "broker_load: bad counts\n"); return 1; }
    size_t size = sizeof(int) * 64 + (size_t)nc * (size_t)rounds * 8;
    char *shm = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED) die("mmap");
    int *go = (int *)shm;
    uint64_t *lat = (uint64_t *)(shm + sizeof(int) * 64);
    pid_t *pids = calloc((size_t)nc, sizeof *pids);
    for (int c = 0; c < nc; c++) {
        pids[c] = fork();
        if (pids[c] < 0) die("fork");
        if (pids[c] == 0) {
            client(argv[1], argv[2], rounds, pace, lat + (size_t)c * rounds, go, (unsigned)c + 1,
                   per_start);
            _exit(0);
        }
    }
    while (__atomic_load_n(&go[1], __ATOMIC_SEQ_CST) < nc) {
        if (waitpid(-1, NULL, WNOHANG) > 0) { fprintf(stderr, "broker_load: a client failed\n"); return 1; }
        usleep(1000);
    }
    __atomic_store_n(&go[0], 1, __ATOMIC_SEQ_CST);
    int bad = 0;
    for (int c = 0; c < nc; c++) {
        int st;
        if (waitpid(pids[c], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) bad = 1;
    }
    if (bad) { fprintf(stderr, "broker_load: a client failed\n"); return 1; }
    int fd = open(argv[6], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die(argv[6]);
    send_all(fd, (const char *)lat, (size_t)nc * (size_t)rounds * 8);
    close(fd);
    return 0;
}
