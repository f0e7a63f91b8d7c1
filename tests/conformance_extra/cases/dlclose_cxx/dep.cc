#include <cstdio>
struct D { D() { std::puts("dep: static ctor"); } ~D() { std::puts("dep: static dtor"); } } d;
int dep_value() { return 3; }
