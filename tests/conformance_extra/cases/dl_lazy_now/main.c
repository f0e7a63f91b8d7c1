#include <stdio.h>
#include <string.h>
#include <dlfcn.h>
int main(int argc, char **argv)
{
    void *h = dlopen("libplug.so", RTLD_NOW);
    const char *e = dlerror();
    printf("RTLD_NOW: %s, names symbol: %s\n", h ? "loaded" : "NULL", e && strstr(e, "not_defined_anywhere_q") ? "yes" : "no");
    h = dlopen("libplug.so", RTLD_LAZY);
    printf("RTLD_LAZY: %s\n", h ? "loaded" : "NULL");
    if (!h) return 1;
    printf("ok_fn = %d\n", ((int (*)(void))dlsym(h, "ok_fn"))());
    fflush(stdout);
    if (argc > 1) printf("bad_fn = %d\n", ((int (*)(void))dlsym(h, "bad_fn"))());
    return 0;
}
