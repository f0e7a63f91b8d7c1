/* The system calls of _native/leasetable.pyx's hot path, in plain C. */
#ifndef LDPOOL_LEASETABLE_SYS_H
#define LDPOOL_LEASETABLE_SYS_H
#include <stdint.h>
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
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
static int lt_wait(int epfd, int *fds, uint32_t *evs, int max) {
    struct epoll_event e[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, e, max, 0);
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
#endif
