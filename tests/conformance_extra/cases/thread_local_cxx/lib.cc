#include <cstdio>
struct LT { int v; const char *n; LT(const char *n) : v(0), n(n) { std::printf("ctor %s\n", n); } ~LT() { std::printf("dtor %s v=%d\n", n, v); } };
static thread_local LT lib_t("lib");
int lib_touch(int k) { lib_t.v += k; return lib_t.v; }
