#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <link.h>
#include <dlfcn.h>
int dep_fn(void);
static char names[32][64]; static int n, has_main;
static int cb(struct dl_phdr_info *i, size_t s, void *d)
{
    if (i->dlpi_name[0] == 0 || strstr(i->dlpi_name, "/exe")) { has_main = 1; return 0; }
    const char *b = strrchr(i->dlpi_name, '/'); b = b ? b + 1 : i->dlpi_name;
    if (strstr(b, "vdso") || strstr(b, "ld-linux")) return 0;
    if (n < 32) snprintf(names[n++], 64, "%s", b);
    return 0;
}
static int cmp(const void *a, const void *b) { return strcmp(a, b); }
__attribute__((constructor)) static void init(void)
{
    dl_iterate_phdr(cb, 0);
    qsort(names, n, 64, cmp);
    printf("hook ctor: main seen=%d objects:", has_main);
    for (int k = 0; k < n; k++) printf(" %s", names[k]);
    printf("\n");
    void *h = dlopen("libplug.so", RTLD_NOW);
    if (!h) { printf("hook ctor: dlopen failed\n"); return; }
    printf("hook ctor: plug_fn(6) = %d, dep_fn = %d\n", ((int (*)(int))dlsym(h, "plug_fn"))(6), dep_fn());
    int *v = dlsym(RTLD_DEFAULT, "exe_value");
    printf("hook ctor: exe_value via RTLD_DEFAULT = %d\n", v ? *v : -1);
}
