#define _GNU_SOURCE
#include <stdio.h>
#include <pthread.h>
#include <unistd.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <string.h>
static void cleanup(void *a) { printf("c1: cleanup handler %s\n", (char *)a); }
void c1_block(int fd, pthread_barrier_t *b)
{
    char c;
    pthread_cleanup_push(cleanup, "outer");
    pthread_cleanup_push(cleanup, "inner");
    pthread_barrier_wait(b);
    for (;;) read(fd, &c, 1);
    pthread_cleanup_pop(0);
    pthread_cleanup_pop(0);
}
void c1_exit(void)
{
    pthread_cleanup_push(cleanup, "exit");
    pthread_exit((void *)5);
    pthread_cleanup_pop(0);
}
__attribute__((noinline)) void c1_backtrace(void)
{
    void *fr[32]; int n = backtrace(fr, 32), lib = 0, exe_main = 0, cx = 0;
    for (int k = 0; k < n; k++) {
        Dl_info i;
        if (!dladdr(fr[k], &i) || !i.dli_sname) continue;
        if (!strcmp(i.dli_sname, "c1_backtrace")) lib++;
        if (!strcmp(i.dli_sname, "main")) exe_main++;
        if (strstr(i.dli_sname, "cx_call_backtrace")) cx++;
    }
    printf("backtrace: c1_backtrace=%d cx=%d main=%d\n", lib, cx, exe_main);
}
