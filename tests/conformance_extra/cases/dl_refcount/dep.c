#include <stdio.h>
__attribute__((constructor)) static void i(void) { puts("dep: ctor"); }
__attribute__((destructor)) static void f(void) { puts("dep: dtor"); }
int dep_fn(void) { return 5; }
