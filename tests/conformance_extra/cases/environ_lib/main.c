#include <stdio.h>
#include <stdlib.h>
#include <dlfcn.h>
extern char **environ;
char ***lib_environ_addr(void); const char *lib_get(const char *); void lib_set(const char *, const char *); int lib_count(const char *);
#define S(x) ((x) ? (x) : "(unset)")
int main(void)
{
    void *h = dlopen("libdlenv.so", RTLD_NOW);
    const char *(*dl_get)(const char *) = dlsym(h, "dl_get"); int (*dl_count)(const char *) = dlsym(h, "dl_count");
    printf("same environ: %s\n", lib_environ_addr() == &environ ? "yes" : "no");
    printf("initial: exe=%s lib=%s dl=%s\n", S(getenv("XTRA_A")), S(lib_get("XTRA_A")), S(dl_get("XTRA_A")));
    setenv("XTRA_B", "from-exe", 1);
    printf("after exe setenv: lib=%s dl=%s\n", S(lib_get("XTRA_B")), S(dl_get("XTRA_B")));
    lib_set("XTRA_C", "from-lib");
    printf("after lib setenv: exe=%s dl=%s\n", S(getenv("XTRA_C")), S(dl_get("XTRA_C")));
    putenv("XTRA_D=putenv"); unsetenv("XTRA_A");
    printf("XTRA_ count: exe-side lib=%d dl=%d\n", lib_count("XTRA_"), dl_count("XTRA_"));
    clearenv();
    printf("after clearenv: lib count=%d dl sees B=%s\n", lib_count("XTRA_"), S(dl_get("XTRA_B")));
    return 0;
}
