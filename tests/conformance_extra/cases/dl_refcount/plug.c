#include <stdio.h>
#include <stdlib.h>
int dep_fn(void);
static int counter;
static void ae(void) { puts("plug: atexit handler"); }
__attribute__((constructor)) static void i(void) { puts("plug: ctor"); atexit(ae); }
__attribute__((destructor)) static void f(void) { puts("plug: dtor"); }
int bump(void) { return ++counter + dep_fn(); }
