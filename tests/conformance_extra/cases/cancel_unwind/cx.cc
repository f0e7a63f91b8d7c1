#include <cstdio>
#include <pthread.h>
extern "C" void c1_block(int, pthread_barrier_t *); extern "C" void c1_exit(void); extern "C" void c1_backtrace(void);
struct Guard { const char *n; Guard(const char *n) : n(n) {} ~Guard() { std::printf("cx: ~Guard %s\n", n); } };
extern "C" void cx_block(int fd, pthread_barrier_t *b) { Guard g("block"); c1_block(fd, b); }
extern "C" void cx_exit(void) { Guard g("exit"); c1_exit(); }
extern "C" __attribute__((noinline)) void cx_call_backtrace(void) { Guard g("bt"); c1_backtrace(); }
