#include <stdio.h>
#include <stdlib.h>
static void ae(void) { printf("first: atexit handler\n"); }
__attribute__((constructor)) static void i(void) { printf("first: ctor (buffered)\n"); atexit(ae); }
__attribute__((destructor)) static void f(void) { printf("first: dtor\n"); }
void first_fn(void) {}
