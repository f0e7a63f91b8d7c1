#include <stdio.h>
#include <stdint.h>
#include <pthread.h>
int lib_aligned(void); int call_all(void);
__thread int exe64 __attribute__((aligned(64))) = 7;
__thread char exepage[10] __attribute__((aligned(4096))) = "x";
static int order[64], n;
int ctor_log(int i) { if (n < 64) order[n++] = i; return 0; }
static int exe_aligned(void) { return ((uintptr_t)&exe64 % 64 == 0) + ((uintptr_t)exepage % 4096 == 0) * 2 + (exe64 == 7) * 4 + (exepage[0] == 'x') * 8; }
static void *thr(void *a) { return (void *)(long)(exe_aligned() * 100 + lib_aligned()); }
int main(void)
{
    pthread_t t; void *r; pthread_create(&t, 0, thr, 0); pthread_join(t, &r);
    printf("main: exe %d lib %d; thread %ld\n", exe_aligned(), lib_aligned(), (long)r);
    printf("ctor order:"); for (int i = 0; i < n; i++) printf(" %d", order[i]); printf("\n");
    printf("call_all: %d then %d\n", call_all(), call_all());
    return 0;
}
