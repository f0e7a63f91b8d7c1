#include <stdio.h>
#include <stdlib.h>
int mine_value(void);
int main(void)
{
    puts("hello");
    printf("mine_value = %d\n", mine_value());
    const char *m = getenv("PRELOAD_MAGIC");
    printf("PRELOAD_MAGIC = %s\n", m ? m : "(unset)");
    return 0;
}
