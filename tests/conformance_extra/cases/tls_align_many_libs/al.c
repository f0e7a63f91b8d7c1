#include <stdint.h>
__thread int lib64 __attribute__((aligned(64))) = 64;
__thread char libpage[100] __attribute__((aligned(4096))) = "page";
int lib_aligned(void) { return ((uintptr_t)&lib64 % 64 == 0) + ((uintptr_t)libpage % 4096 == 0) * 2 + (lib64 == 64) * 4 + (libpage[0] == 'p') * 8; }
