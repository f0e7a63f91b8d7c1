#include <stdio.h>
#include <dlfcn.h>
#include <pthread.h>
static void *h[12]; static long (*g[12])(int);
static void open_all(void) { char n[32]; for (int i = 0; i < 12; i++) { snprintf(n, 32, "libt%d.so", i); h[i] = dlopen(n, RTLD_NOW); g[i] = (long (*)(int))dlsym(h[i], "tget"); } }
static void *thr(void *a) { long s = 0; for (int i = 0; i < 12; i++) s += g[i](0) + g[i](1); return (void *)s; }
static long sum(void) { long s = 0; for (int i = 0; i < 12; i++) s += g[i](0) + g[i](1); return s; }
int main(void)
{
    for (int round = 1; round <= 3; round++) {
        open_all();
        long m = sum(); pthread_t t; void *r; pthread_create(&t, 0, thr, 0); pthread_join(t, &r);
        long m2 = sum();
        printf("round %d: main %ld then %ld, thread %ld\n", round, m, m2, (long)r);
        for (int i = 0; i < 12; i += 2) dlclose(h[i]);
        for (int i = 11; i > 0; i -= 2) dlclose(h[i]);
    }
    return 0;
}
