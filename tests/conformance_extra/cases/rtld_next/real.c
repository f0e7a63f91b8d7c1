#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
int compute(int x) { printf("real: compute(%d), next is %s\n", x, dlsym(RTLD_NEXT, "compute") ? "set" : "NULL"); return x + 1; }
int scale(int x) { return x * 10; }
