/* The system calls of _native/leasetable.pyx's hot path, in plain C. */
#ifndef LDPOOL_LEASETABLE_SYS_H
#define LDPOOL_LEASETABLE_SYS_H
#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static int lt_stat(const char *path, uint64_t *out) {
    struct stat st;
    if (stat(path, &st) < 0) return -1;
    out[0] = (uint64_t)st.st_dev; out[1] = (uint64_t)st.st_ino; out[2] = (uint64_t)st.st_size;
    out[3] = (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
    out[4] = (uint64_t)st.st_ctim.tv_sec * 1000000000u + (uint64_t)st.st_ctim.tv_nsec;
    return 0;
}
static double lt_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}
/* ready descriptors; 0 on EINTR, -1 once the set is unusable */
static int lt_wait(int ep, int *fds, uint32_t *evs, int max, int timeout) {
    struct epoll_event e[256];
    if (max > 256) max = 256;
    int n = epoll_wait(ep, e, max, timeout);
    if (n < 0) return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) { fds[i] = e[i].data.fd; evs[i] = e[i].events; }
    return n;
}
static ssize_t lt_recv(int fd, char *buf, size_t n) {
    ssize_t r;
    do r = recv(fd, buf, n, MSG_DONTWAIT); while (r < 0 && errno == EINTR);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -2;
    return r;
}
static ssize_t lt_send(int fd, const char *buf, size_t n) {
    ssize_t r;
    do r = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL); while (r < 0 && errno == EINTR);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    return r;
}
/* The fast door (host_broker/fastdoor.py, _native/leasetable_door.pxi):
 * a thread of its own with an epoll set of its own. */
static int lt_epoll(void) { return epoll_create1(EPOLL_CLOEXEC); }
static int lt_add(int ep, int fd) {
    struct epoll_event ev;
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    ev.data.fd = fd;
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}
static void lt_del(int ep, int fd) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); }
/* a new connection's descriptor; -1: none pending, -2: out of descriptors
 * (the queue waits), -3: the listener was shut down (the broker stops) */
static int lt_accept1(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) return fd;
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) return -2;
        return -3;
    }
}
static void lt_pause_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}
/* one log line as host_broker/daemon.py's stderr_log writes it */
static void lt_log(int fd, const char *msg, size_t n) {
    char buf[512];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    size_t k = strftime(buf, sizeof buf, "%H:%M:%S ", &tm);
    int w = snprintf(buf + k, sizeof buf - k, "ldpool broker[%d]: %.*s\n", (int)getpid(), (int)n, msg);
    if (w > 0) k += (size_t)w < sizeof buf - k ? (size_t)w : sizeof buf - k - 1;
    ssize_t r;
    do r = write(fd, buf, k); while (r < 0 && errno == EINTR);
}
static int lt_peercred(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred c;
    socklen_t n = sizeof c;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &n) < 0) return -1;
    *pid = c.pid; *uid = c.uid; *gid = c.gid;
    return 0;
}
/* send() with a descriptor riding on the first byte (SCM_RIGHTS) */
static ssize_t lt_send_fd(int fd, const char *buf, size_t n, int passfd) {
    struct iovec iov = {(void *)buf, n};
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &passfd, sizeof(int));
    ssize_t r;
    do r = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL); while (r < 0 && errno == EINTR);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    return r;
}
static void lt_drop(int epfd, int fd) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
}
#endif
