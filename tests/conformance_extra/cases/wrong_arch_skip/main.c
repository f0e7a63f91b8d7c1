#include <stdio.h>
const char *pick(void);
int main(void) { printf("picked: %s\n", pick()); return 0; }
