#include <stdio.h>
int main(void) { puts("main must not run"); return 0; }
