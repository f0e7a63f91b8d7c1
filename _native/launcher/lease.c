/* The program's lease, what the broker connection (broker.c) is for:
 * ACQUIRE_PROGRAM on the slow path, the fast path's announcement (fastpath.c
 * sends HELLO and ACQUIRE_PROGRAM without waiting: the replies are read when
 * the lease is first needed, or before a fork(), see settle()), the
 * reconnection after a broker restart (RECLAIM), dlopen (ACQUIRE_LIBRARY)
 * and dlclose (RELEASE). */
#include "brokerwire.h"
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

static uint64_t lease;           /* of our program; 0 while unknown (or refused) */
static int replies_pending;      /* HELLO + ACQUIRE_PROGRAM sent by the fast path, replies unread */
static const void *fast_plan;    /* the plan the fast path runs on (to compare with the broker's) */
static size_t fast_len;
static struct buf br_program_req;   /* the ACQUIRE_PROGRAM keys, sent again with RECLAIM */
static int program_req_built;
static void settle_before_fork(void);

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
        br_put(&b, "path", path);
        br_put(&b, "argv0", argv0);
        br_put(&b, "cwd", getcwd(cwd, sizeof cwd) ? cwd : "/");
        for (char **e = environ; *e; e++)
            if (strncmp(*e, "LD_", 3) == 0 && !(ldp_keep_preload && strncmp(*e, "LD_PRELOAD=", 11) == 0))
                br_put(&b, "env", *e);
        const char *pre = getenv("LDPOOL_PRELOAD");
        if (pre) {
            char *v = malloc(strlen(pre) + 12);
            strcat(strcpy(v, "LD_PRELOAD="), pre);
            br_put(&b, "env", v);
            free(v);
        }
        br_program_req = b;
        program_req_built = 1;
    }
    *len = br_program_req.n;
    return br_program_req.p;
}

/* HELLO and ACQUIRE_PROGRAM as one write (every send wakes the broker). */
static int send_program_pair(char *err, size_t errlen)
{
    struct buf h = {0}, out = {0};
    br_hello_payload(&h);
    br_frame(&out, OP_HELLO, &h);
    br_frame(&out, OP_ACQ_PROGRAM, &br_program_req);
    free(h.p);
    int w = br_write_frames(&out, err, errlen);
    free(out.p);
    return w;
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
    if (br_connect(err, errlen) < 0 || send_program_pair(err, errlen) < 0 || br_recv_hello(err, errlen) < 0)
        return NULL;
    *connect_failed = 0;
    uint32_t op;
    void *r = br_reply(OP_ACQ_PROGRAM, &op, len, NULL, err, errlen);
    if (r) lease = plan_lease(r, *len);
    return r;
}

/* The fast path: tell the broker we run `plan` (connect and send, no
 * waiting; the pool descriptor is already ours).  -1 when no broker
 * answers: the slow path starts one. */
int ldp_broker_announce(const void *plan, size_t len, uint64_t plan_epoch)
{
    /* sun_path-sized: a longer path cannot be connected to (and a small
     * frame is fewer stack pages touched) */
    char sock[sizeof ((struct sockaddr_un *)0)->sun_path], err[256];
    if (ldp_socket_path(sock, sizeof sock) < 0) return -1;
    /* the broker's door for clients that do not wait (host_broker/fastdoor.py):
     * answered there, the broker does not preempt our start-up */
    char door[sizeof sock + 8];
    memcpy(door, sock, strlen(sock));
    memcpy(door + strlen(sock), ".fast", 6);
    int fd = br_try_connect(door);
    if (fd < 0) fd = br_try_connect(sock);
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
    br_own_pool_fd = 1;
    br_epoch = plan_epoch;
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
    br_own_pool_fd = 0;
    br_conn_lost = 0;
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
    uint64_t plan_epoch = br_epoch;
    int hello_ok = br_recv_hello(err, errlen) == 0 && br_epoch == plan_epoch;
    br_epoch = plan_epoch;          /* our mappings' epoch, whatever this broker's is */
    if (br_conn_lost) return -1;
    uint32_t op;
    size_t len;
    void *r = br_reply(OP_ACQ_PROGRAM, &op, &len, NULL, err, errlen);
    if (!r) {
        if (ldp_debug) ldp_note("note: the broker refused the cached plan's program: %s", err);
        return br_conn_lost ? -1 : 0;
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
    uint64_t old_epoch = br_epoch;
    close(ldp_broker_fd);
    ldp_broker_fd = -1;
    br_conn_lost = 0;
    replies_pending = 0;
    if (br_connect(err, errlen) < 0 || br_send_hello(err, errlen) < 0 || br_recv_hello(err, errlen) < 0) return -1;
    if (br_epoch != old_epoch) {
        snprintf(err, errlen, "the broker restarted with a new epoch; dlopen through it is not possible");
        return -1;
    }
    uint32_t op;
    size_t len;
    const struct ldp_plan *mine = ldp_objs[ldp_main]->plan;
    if (!lease) {
        char *r = br_call(OP_ACQ_PROGRAM, &br_program_req, &op, &len, NULL, err, errlen);
        if (r && same_plan(r, len, mine->buf, mine->len)) lease = plan_lease(r, len);
        else if (r) snprintf(err, errlen, "the broker's plan for the program changed; dlopen through it is not possible");
        free(r);
        return lease ? 0 : -1;
    }
    struct buf b = {0};
    char num[32];
    snprintf(num, sizeof num, "%lu", lease);
    br_put(&b, "lease", num);
    snprintf(num, sizeof num, "%lu", br_epoch);
    br_put(&b, "epoch", num);
    for (uint32_t i = 0; i < ldp_nobj; i++) {
        /* 0 for a dlclose'd object: the lease dropped it (protocol.md) */
        snprintf(num, sizeof num, "0x%lx", ldp_objs[i] && ldp_objs[i]->state != LDP_ST_GONE ? ldp_objs[i]->o->map_start : 0);
        br_put(&b, "addr", num);
    }
    /* the program as we acquired it: the broker resolves it again for dlopen */
    if (b.n + br_program_req.n > b.cap) b.p = realloc(b.p, b.cap = b.n + br_program_req.n);
    if (br_program_req.n) memcpy(b.p + b.n, br_program_req.p, br_program_req.n);
    b.n += br_program_req.n;
    char *r = br_call(OP_RECLAIM, &b, &op, &len, NULL, err, errlen);
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
    br_put(&b, "lease", num);
    br_put(&b, "name", name);
    br_put(&b, "requester", requester ? requester->path : ldp_objs[ldp_main]->path);
    snprintf(num, sizeof num, "%d", mode);
    br_put(&b, "flags", num);
    uint32_t op;
    char *r = br_call(OP_ACQ_LIBRARY, &b, &op, len, NULL, err, errlen);
    if (!r && br_conn_lost && reconnect(err, errlen) == 0)
        r = br_call(OP_ACQ_LIBRARY, &b, &op, len, NULL, err, errlen);
    free(b.p);
    /* no broker, or one that cannot serve this lease: ld.so can still load it */
    *unserved = !r && (br_conn_lost || ldp_broker_fd < 0 || strstr(err, "not supported")) ? -1 : 0;
    return r;
}

void ldp_broker_release(uint64_t lease_id, uint32_t first, uint32_t n)
{
    char err[256];
    if (ldp_broker_fd < 0 || settle(err, sizeof err) < 0) return;
    struct buf b = {0};
    char num[32];
    snprintf(num, sizeof num, "%lu", lease_id ? lease_id : lease);
    br_put(&b, "lease", num);
    for (uint32_t i = 0; i < n; i++) {
        snprintf(num, sizeof num, "%u", first + i);
        br_put(&b, "object", num);
    }
    uint32_t op;
    size_t len;
    free(br_call(OP_RELEASE, &b, &op, &len, NULL, err, sizeof err));
    free(b.p);
}
