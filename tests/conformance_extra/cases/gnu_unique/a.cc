#include "u.h"
int *a_count() { Reg::count++; return &Reg::count; }
int *a_box() { Box<long>::value++; return &Box<long>::value; }
