int tbl_v1[4] = {1, 2, 3, 4};
int tbl_v2[8] = {21, 22, 23, 24, 25, 26, 27, 28};
__asm__(".symver tbl_v1,tbl@V1");
__asm__(".symver tbl_v2,tbl@@V2");
int counter = 200;
int get_tbl0(void) { return tbl_v2[0]; }
int get_counter(void) { return counter; }
void inc_counter(void) { counter++; }
