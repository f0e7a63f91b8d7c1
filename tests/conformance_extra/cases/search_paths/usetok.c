#include <stdio.h>
const char *tok_who(void);
int main(void) { printf("found: %s\n", tok_who()); return 0; }
