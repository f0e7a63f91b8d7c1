#include <stdio.h>
int a1(void); int main(void) { printf("a1 = %d\n", a1()); return 0; }
