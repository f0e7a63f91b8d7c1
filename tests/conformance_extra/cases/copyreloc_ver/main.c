#include <stdio.h>
extern int tbl[]; extern int counter;
int get_tbl0(void); int get_counter(void); void inc_counter(void);
int main(void)
{
    printf("tbl[0]=%d tbl[3]=%d counter=%d\n", tbl[0], tbl[3], counter);
    counter += 5; inc_counter(); tbl[0] = -1;
    printf("after writes: exe counter=%d lib counter=%d lib tbl0=%d\n", counter, get_counter(), get_tbl0());
    return 0;
}
