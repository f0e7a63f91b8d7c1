#include <stdio.h>
static int counter;
__attribute__((destructor)) static void f(void) { puts("nd: dtor (at exit)"); }
int nd_bump(void) { return ++counter; }
