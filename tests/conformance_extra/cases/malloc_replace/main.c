#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
int main(void)
{
    unsigned long (*calls)(void) = (unsigned long (*)(void))dlsym(RTLD_DEFAULT, "mymalloc_calls");
    unsigned long before = calls ? calls() : 0;
    char *s = strdup("hello allocator");
    void *p = malloc(100); p = realloc(p, 1000); free(p);
    FILE *f = fopen("/proc/self/stat", "r"); if (f) fclose(f);
    void *a; posix_memalign(&a, 256, 10);
    printf("replacement active: %s, strdup ok: %s, aligned: %s\n", calls ? "yes" : "no", strcmp(s, "hello allocator") ? "no" : "yes", ((size_t)a & 255) ? "no" : "yes");
    if (calls) printf("calls counted (strdup, malloc, realloc, fopen, memalign): %s\n", calls() - before >= 5 ? "yes" : "no");
    return 0;
}
