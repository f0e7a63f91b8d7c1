#include <cstdio>
#include <string>
int dep_value();
struct S { const char *n; S(const char *n) : n(n) { std::printf("plug: ctor %s\n", n); } ~S() { std::printf("plug: dtor %s\n", n); } };
static S first("first"), second("second");
static S &local() { static S l("function-local"); return l; }
extern "C" std::string *plug_make() { local(); return new std::string("made in plug " + std::to_string(dep_value())); }
