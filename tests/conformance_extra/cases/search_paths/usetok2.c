#include <stdio.h>
const char *tok_who(void); const char *tok2_who(void);
int main(void) { printf("found: %s, %s\n", tok_who(), tok2_who()); return 0; }
