#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
void first_fn(void);
__attribute__((constructor)) static void i(void)
{
    first_fn();
    printf("quit: ctor, mode=%s\n", getenv("QUIT_MODE"));
    if (getenv("QUIT_MODE")[0] == 'e') exit(9);
    _exit(4);
}
__attribute__((destructor)) static void f(void) { printf("quit: dtor\n"); }
