/* The floor under the broker latency benchmark (benchmarks/bench_broker.py):
 * a server that speaks just enough of the wire protocol to satisfy
 * broker_load.c and does no work at all.  One thread, one epoll set, level
 * triggered, every whole frame answered at once with a prepared reply: a
 * HELLO and a RELEASE with an empty one, an ACQUIRE_PROGRAM with PLAN_BYTES
 * bytes (the size of the real plan, so the copies cost the same).  What
 * broker_load measures against it is the clients' and the kernel's share of
 * a round trip, which no broker can remove.
 *
 *   null_broker SOCKET PLAN_BYTES      (runs until killed) */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define REPLY 0x100
#define BUFSZ 65536

struct conn { char buf[BUFSZ]; size_t n; };

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: null_broker SOCKET PLAN_BYTES\n"); return 1; }
    size_t plan = (size_t)atol(argv[2]);
    char *acq = calloc(1, 8 + plan);
    uint32_t h[2] = {(uint32_t)plan, 2 | REPLY};
    memcpy(acq, h, 8);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[1]);
    unlink(argv[1]);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 256) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) continue;
                c = calloc(1, sizeof *c + sizeof(int));
                memcpy(c + 1, &fd, sizeof fd);
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                continue;
            }
            int fd;
            memcpy(&fd, c + 1, sizeof fd);
            ssize_t r = recv(fd, c->buf + c->n, BUFSZ - c->n, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(fd);
                free(c);
                continue;
            }
            c->n += (size_t)r;
            size_t off = 0;
            while (c->n - off >= 8) {
                uint32_t f[2];
                memcpy(f, c->buf + off, 8);
                if (c->n - off - 8 < f[0]) break;
                off += 8 + f[0];
                if (f[1] == 2) {
                    send(fd, acq, 8 + plan, MSG_NOSIGNAL);
                } else {
                    uint32_t e[2] = {0, f[1] | REPLY};
                    send(fd, e, 8, MSG_NOSIGNAL);
                }
            }
            memmove(c->buf, c->buf + off, c->n - off);
            c->n -= off;
        }
    }
}
