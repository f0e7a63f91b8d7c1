#include <cstdio>
#include <dlfcn.h>
#include "u.h"
int *a_count(); int *a_box();
int main()
{
    int *ac = a_count(), *ab = a_box();
    void *h = dlopen("libp.so", RTLD_NOW | RTLD_LOCAL);
    int *pc = ((int *(*)())dlsym(h, "p_count"))(), *pb = ((int *(*)())dlsym(h, "p_box"))();
    Reg::count += 1000; Box<long>::value += 1000;
    std::printf("count: same object exe/a/p: %s %s, value %d\n", ac == &Reg::count ? "yes" : "no", pc == &Reg::count ? "yes" : "no", Reg::count);
    std::printf("box: same object exe/a/p: %s %s, value %d\n", ab == &Box<long>::value ? "yes" : "no", pb == &Box<long>::value ? "yes" : "no", Box<long>::value);
    return 0;
}
