#include <stdio.h>
#include <dlfcn.h>
int main(void)
{
    void *a = dlopen("liba.so", RTLD_NOW | RTLD_LOCAL);
    printf("liba LOCAL: %s\n", a ? "ok" : dlerror());
    printf("RTLD_DEFAULT a_value: %s\n", dlsym(RTLD_DEFAULT, "a_value") ? "found" : "NULL");
    printf("handle a_value: %s\n", dlsym(a, "a_value") ? "found" : "NULL");
    void *b = dlopen("libb.so", RTLD_NOW);
    printf("libb NOW with a LOCAL: %s\n", b ? "loaded" : "failed");
    dlerror();
    void *a2 = dlopen("liba.so", RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    printf("promote via NOLOAD|GLOBAL: same handle %s\n", a2 == a ? "yes" : "no");
    printf("RTLD_DEFAULT a_value after promotion: %s\n", dlsym(RTLD_DEFAULT, "a_value") ? "found" : "NULL");
    b = dlopen("libb.so", RTLD_NOW);
    printf("libb NOW after promotion: %s\n", b ? "loaded" : "failed");
    if (b) { int (*f)(void) = (int (*)(void))dlsym(b, "b_calls_a"); printf("b_calls_a = %d\n", f()); }
    return 0;
}
