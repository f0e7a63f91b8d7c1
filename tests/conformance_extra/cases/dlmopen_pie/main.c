#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <dlfcn.h>
int main(int argc, char **argv)
{
    void *a = dlopen("./liblm.so", RTLD_NOW);
    void *b = dlmopen(LM_ID_NEWLM, "./liblm.so", RTLD_NOW);
    printf("dlmopen: %s\n", b ? "ok" : "NULL");
    if (b) {
        int (*fa)(void) = dlsym(a, "bump"), (*fb)(void) = dlsym(b, "bump");
        fa(); fa();
        printf("separate copies: %s (%d %d)\n", fa != fb ? "yes" : "no", fa(), fb());
        Lmid_t id; dlinfo(b, RTLD_DI_LMID, &id); printf("lmid nonzero: %s\n", id ? "yes" : "no");
    }
    void *p = dlopen("./pie", RTLD_NOW);
    const char *e = dlerror();
    printf("dlopen(PIE): %s, error mentions executable: %s\n", p ? "loaded" : "NULL", e && strstr(e, "executable") ? "yes" : "no");
    return 0;
}
