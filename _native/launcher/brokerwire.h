/* Between broker.c (the connection: frames, the socket, the embedded
 * broker, HELLO) and lease.c (what the connection is for: the program's
 * lease).  Private to the broker client of ldpool-exec. */
#ifndef LDP_BROKER_WIRE_H
#define LDP_BROKER_WIRE_H
#include "ldp.h"

#define OP_HELLO 1
#define OP_ACQ_PROGRAM 2
#define OP_ACQ_LIBRARY 3
#define OP_RELEASE 4
#define OP_RECLAIM 7
#define OP_ERROR 0x1FF
#define MAX_FRAME (64u << 20)

struct buf { char *p; size_t n, cap; };

extern uint64_t br_epoch;        /* of the pool we map (HELLO, or the plan cache file) */
extern int br_conn_lost;         /* the last call failed because the connection broke */
extern int br_own_pool_fd;       /* ldp_pool_fd is our own open (it holds the pins): keep it */

void br_put(struct buf *b, const char *key, const char *val);   /* key=value\0 */
void br_frame(struct buf *out, uint32_t op, const struct buf *req);
int br_write_all(int fd, const void *p, size_t n);
int br_try_connect(const char *path);          /* no embedded broker started */
int br_connect(char *err, size_t errlen);      /* the embedded broker started if needed */
int br_write_frames(const struct buf *frames, char *err, size_t errlen);   /* one write */
int br_send(uint32_t op, struct buf *req, char *err, size_t errlen);       /* one frame */
/* the reply to request op, malloc'd; a descriptor on its first byte lands in *fdp */
char *br_reply(uint32_t op, uint32_t *rop, size_t *rlen, int *fdp, char *err, size_t errlen);
char *br_call(uint32_t op, struct buf *req, uint32_t *rop, size_t *rlen, int *fdp, char *err, size_t errlen);
void br_hello_payload(struct buf *b);
int br_send_hello(char *err, size_t errlen);
int br_recv_hello(char *err, size_t errlen);

#endif
