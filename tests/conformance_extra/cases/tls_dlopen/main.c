#include <stdio.h>
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
static pthread_barrier_t b1, b2;
static int *(*gd_addr)(void); static const char *(*gd_str)(void); static int (*ie_bump)(int);
static int results[2][3];
static void use(int slot, int k)
{
    int *p = gd_addr();
    results[slot][0] = *p; *p += k; results[slot][1] = *gd_addr();
    results[slot][2] = ie_bump(k) * (strcmp(gd_str(), "init-image") == 0);
}
static void *old_thread(void *a) { pthread_barrier_wait(&b1); pthread_barrier_wait(&b2); use(0, 1); return 0; }
static void *new_thread(void *a) { use(1, 2); return 0; }
int main(void)
{
    pthread_barrier_init(&b1, 0, 2); pthread_barrier_init(&b2, 0, 2);
    pthread_t t; pthread_create(&t, 0, old_thread, 0);
    pthread_barrier_wait(&b1);
    void *g = dlopen("libgd.so", RTLD_NOW), *i = dlopen("libie.so", RTLD_NOW);
    printf("dlopen gd: %s, ie: %s\n", g ? "ok" : dlerror(), i ? "ok" : dlerror());
    if (!g || !i) return 1;
    gd_addr = dlsym(g, "gd_addr"); gd_str = dlsym(g, "gd_str"); ie_bump = dlsym(i, "ie_bump");
    *gd_addr() = 1000; ie_bump(1000);
    pthread_barrier_wait(&b2); pthread_join(t, 0);
    pthread_create(&t, 0, new_thread, 0); pthread_join(t, 0);
    for (int s = 0; s < 2; s++) printf("%s thread: gd %d -> %d, ie %d\n", s ? "new" : "old", results[s][0], results[s][1], results[s][2]);
    printf("main: gd %d, ie %d, str %s\n", *gd_addr(), ie_bump(0), gd_str());
    return 0;
}
