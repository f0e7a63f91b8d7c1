#include <cstdio>
#include <dlfcn.h>
#include <pthread.h>
int lib_touch(int);
struct ET { int v; ET() : v(0) { std::printf("ctor exe\n"); } ~ET() { std::printf("dtor exe v=%d\n", v); } };
static thread_local ET exe_t;
static int (*dl_touch)(int);
static void *thr(void *arg)
{
    long k = (long)arg;
    exe_t.v += k; lib_touch(k * 10); dl_touch(k * 100);
    std::printf("thread %ld: exe=%d lib=%d dl=%d\n", k, exe_t.v, lib_touch(0), dl_touch(0));
    return 0;
}
int main()
{
    setvbuf(stdout, 0, _IONBF, 0);
    void *h = dlopen("libtldl.so", RTLD_NOW);
    dl_touch = (int (*)(int))dlsym(h, "dl_touch");
    for (long k = 1; k <= 2; k++) { pthread_t t; pthread_create(&t, 0, thr, (void *)k); pthread_join(t, 0); std::printf("joined %ld\n", k); }
    exe_t.v = 7; lib_touch(8); dl_touch(9);
    std::printf("main done\n");
    return 0;
}
