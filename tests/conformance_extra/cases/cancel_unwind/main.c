#include <stdio.h>
#include <pthread.h>
#include <unistd.h>
void cx_block(int, pthread_barrier_t *); void cx_exit(void); void cx_call_backtrace(void);
static pthread_barrier_t b; static int fds[2];
static void *t1(void *a) { cx_block(fds[0], &b); return 0; }
static void *t2(void *a) { cx_exit(); return 0; }
int main(void)
{
    setvbuf(stdout, 0, _IONBF, 0);
    pipe(fds); pthread_barrier_init(&b, 0, 2);
    pthread_t t; void *r;
    pthread_create(&t, 0, t1, 0); pthread_barrier_wait(&b);
    pthread_cancel(t); pthread_join(t, &r);
    printf("joined: canceled=%s\n", r == PTHREAD_CANCELED ? "yes" : "no");
    pthread_create(&t, 0, t2, 0); pthread_join(t, &r);
    printf("joined: exit value %ld\n", (long)r);
    cx_call_backtrace();
    return 0;
}
