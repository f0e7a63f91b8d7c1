#include <stdio.h>
#include <dlfcn.h>
const char *override_me(void);
int lib_fn(void);
void und_call(int);
int main(void)
{
    setvbuf(stdout, 0, _IONBF, 0);
    int (*pre)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "pre_fn");
    printf("main: override_me from %s, lib_fn %d, pre_fn %d\n", override_me(), lib_fn(), pre ? pre() : -1);
    und_call(0);
    return 0;
}
