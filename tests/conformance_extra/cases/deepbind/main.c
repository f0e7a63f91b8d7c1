#include <stdio.h>
#include <dlfcn.h>
const char *who(void) { return "exe"; }
const char *who_dep(void) { return "exe"; }
int main(int argc, char **argv)
{
    int deep = argc > 1;
    void *h = dlopen("libplug.so", RTLD_NOW | (deep ? RTLD_DEEPBIND : 0));
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    char buf[128];
    ((void (*)(char *, int))dlsym(h, "plug_report"))(buf, sizeof buf);
    printf("%s: plugin sees %s; exe sees who=%s\n", deep ? "DEEPBIND" : "default", buf, who());
    return 0;
}
