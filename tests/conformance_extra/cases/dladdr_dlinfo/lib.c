int lib_obj[16];
int lib_func(int x) { return x * 3 + lib_obj[x & 15]; }
