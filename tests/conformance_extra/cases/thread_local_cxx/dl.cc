#include <cstdio>
struct DT { int v; DT() : v(0) { std::printf("ctor dl\n"); } ~DT() { std::printf("dtor dl v=%d\n", v); } };
static thread_local DT dl_t;
extern "C" int dl_touch(int k) { dl_t.v += k; return dl_t.v; }
