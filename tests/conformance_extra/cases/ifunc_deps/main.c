#include <stdio.h>
int add1(int); int add1_which(void); int dep_pick(int);
static int m1(int x) { return x * 2; }
static int m2(int x) { return x << 1; }
static int chosen;
/* the exe's resolver runs before its PLT works (natively a call into a lib crashes): cpu features only */
static void *resolve_mul2(void) { __builtin_cpu_init(); chosen = __builtin_cpu_supports("sse2") ? 2 : 1; return chosen == 2 ? (void *)m2 : (void *)m1; }
static int mul2(int) __attribute__((ifunc("resolve_mul2")));
int (*volatile fp)(int) = mul2;
int main(void)
{
    int r = add1(41); /* call first: a lazily bound ifunc resolves at the first call */
    printf("add1(41) = %d, which = %d\n", r, add1_which());
    printf("mul2(21) = %d, via pointer %d, chosen = %d\n", mul2(21), fp(21), chosen);
    printf("pointer equality add1: %s\n", (void *)add1 == (void *)&add1 ? "yes" : "no");
    return 0;
}
