#include <stdio.h>
#include <dlfcn.h>
int exe_value = 77;
int main(void) { printf("main: plug loaded: %s\n", dlopen("libplug.so", RTLD_NOW | RTLD_NOLOAD) ? "yes" : "no"); return 0; }
