#include "u.h"
extern "C" int *p_count() { Reg::count += 100; return &Reg::count; }
extern "C" int *p_box() { Box<long>::value += 100; return &Box<long>::value; }
