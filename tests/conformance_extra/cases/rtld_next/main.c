#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <dlfcn.h>
int compute(int); int scale(int);
int main(int argc, char **argv)
{
    printf("compute(5) = %d\n", compute(5));
    int (*sc)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "scale");
    printf("scale(4) direct = %d, via RTLD_DEFAULT = %d\n", scale(4), sc(4));
    printf("RTLD_NEXT compute from exe = %s\n", dlsym(RTLD_NEXT, "compute") ? "found" : "NULL");
    return 0;
}
