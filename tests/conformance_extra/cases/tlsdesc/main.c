#include <stdio.h>
#include <dlfcn.h>
#include <pthread.h>
int a_bump(int);
static int (*d_work)(int);
static pthread_barrier_t b;
static void *early(void *x) { pthread_barrier_wait(&b); pthread_barrier_wait(&b); return (void *)(long)(d_work(1) + a_bump(0) * 100000); }
static void *late(void *x) { return (void *)(long)(d_work(2) + a_bump(0) * 100000); }
int main(void)
{
    pthread_barrier_init(&b, 0, 2);
    pthread_t t1, t2; void *r1, *r2;
    pthread_create(&t1, 0, early, 0); pthread_barrier_wait(&b);
    void *h = dlopen("libd.so", RTLD_NOW);
    d_work = (int (*)(int))dlsym(h, "d_work");
    printf("main: %d\n", d_work(3));
    pthread_barrier_wait(&b); pthread_join(t1, &r1);
    pthread_create(&t2, 0, late, 0); pthread_join(t2, &r2);
    printf("early thread: %ld, late thread: %ld, main again: %d, a_bump: %d\n", (long)r1, (long)r2, d_work(0), a_bump(0));
    return 0;
}
