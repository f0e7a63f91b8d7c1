#include <stdio.h>
#include <dlfcn.h>
static void nd_test(const char *name, int flags)
{
    void *h = dlopen(name, RTLD_NOW | flags);
    int (*f)(void) = (int (*)(void))dlsym(h, "nd_bump");
    printf("%s nd_bump = %d\n", name, f());
    dlclose(h);
    printf("%s after dlclose, NOLOAD: %s\n", name, dlopen(name, RTLD_NOW | RTLD_NOLOAD) ? "yes" : "no");
    h = dlopen(name, RTLD_NOW);
    f = (int (*)(void))dlsym(h, "nd_bump");
    printf("%s nd_bump again = %d\n", name, f());
}
int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    void *h1 = dlopen("libplug.so", RTLD_NOW);
    void *h2 = dlopen("libplug.so", RTLD_NOW);
    printf("same handle: %s\n", h1 == h2 ? "yes" : "no");
    int (*b)(void) = (int (*)(void))dlsym(h1, "bump");
    printf("bump = %d\n", b());
    printf("dlclose 1 = %d\n", dlclose(h1));
    printf("still loaded: %s\n", dlopen("libplug.so", RTLD_NOW | RTLD_NOLOAD) ? "yes" : "no");
    dlclose(h1); /* the NOLOAD above took a reference */
    printf("bump = %d\n", b());
    printf("dlclose 2 = %d\n", dlclose(h2));
    printf("plug loaded: %s, dep loaded: %s\n", dlopen("libplug.so", RTLD_NOW | RTLD_NOLOAD) ? "yes" : "no",
           dlopen("libdep.so", RTLD_NOW | RTLD_NOLOAD) ? "yes" : "no");
    nd_test("libnd.so", 0);
    nd_test("libnd2.so", RTLD_NODELETE);
    puts("main: return");
    return 0;
}
