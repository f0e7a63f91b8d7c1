#include <stdio.h>
extern char huge[]; extern int many_count; extern int (*const ptrs[])(void);
long bss_check(void); long use_all(void);
int main(void)
{
    printf("bss zero sum = %ld\n", bss_check());
    printf("huge first/last = %d %d\n", huge[0], huge[(256 << 20) - 1]);
    long s = 0; for (int i = 0; i < many_count; i++) s += ptrs[i]();
    printf("many: count %d, ptr sum %ld, direct sum %ld\n", many_count, s, use_all());
    return 0;
}
