#include <stdio.h>
__attribute__((constructor)) static void i(void) { puts("plug: ctor"); }
int plug_fn(int x) { return x * 7; }
