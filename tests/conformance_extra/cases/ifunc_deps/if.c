#include <sys/auxv.h>
int dep_pick(int);
static int impl1(int x) { return x + 1; }
static int impl2(int x) { return x + 1; }
static int which;
static void *resolve_add1(void)
{
    __builtin_cpu_init();
    which = dep_pick(__builtin_cpu_supports("sse2") && getauxval(AT_HWCAP) != 0);
    return which == 2 ? (void *)impl2 : (void *)impl1;
}
int add1(int) __attribute__((ifunc("resolve_add1")));
int add1_which(void) { return which; }
