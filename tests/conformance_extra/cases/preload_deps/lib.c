#include <stdio.h>
#define S2(x) #x
#define S(x) S2(x)
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#ifdef CALLS
int CALLS(void);
#endif
__attribute__((constructor)) static void i(void) { printf("ctor %s\n", S(NAME)); }
__attribute__((destructor)) static void f(void) { printf("dtor %s\n", S(NAME)); }
int CAT(NAME, _fn)(void)
{
#ifdef CALLS
    return 100 + CALLS();
#else
    return 1;
#endif
}
__attribute__((weak)) const char *override_me(void) { return S(NAME); }
