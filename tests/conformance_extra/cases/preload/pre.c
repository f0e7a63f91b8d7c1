#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <stdio.h>
int mine_value(void) { int (*n)(void) = (int (*)(void))dlsym(RTLD_NEXT, "mine_value"); return n() * 10 + (TAG[3] - '0'); }
int puts(const char *s)
{
    int (*n)(const char *) = (int (*)(const char *))dlsym(RTLD_NEXT, "puts");
    fputs("[" TAG "] ", stdout);
    return n(s);
}
char *getenv(const char *name)
{
    char *(*n)(const char *) = (char *(*)(const char *))dlsym(RTLD_NEXT, "getenv");
    if (!strcmp(name, "PRELOAD_MAGIC")) return TAG "-magic";
    return n(name);
}
