int tbl[4] = {1, 2, 3, 4};
int counter = 100;
int get_tbl0(void) { return tbl[0]; }
int get_counter(void) { return counter; }
void inc_counter(void) { counter++; }
