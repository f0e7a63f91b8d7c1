#include <cstdio>
#include <string>
#include <dlfcn.h>
int main()
{
    setvbuf(stdout, 0, _IONBF, 0);
    for (int round = 1; round <= 2; round++) {
        std::printf("round %d\n", round);
        void *h = dlopen("libplug.so", RTLD_NOW);
        auto make = (std::string *(*)())dlsym(h, "plug_make");
        std::string *s = make();
        std::printf("dlclose = %d\n", dlclose(h));
        std::printf("string: %s\n", s->c_str());
        delete s;
    }
    std::puts("main: return");
    return 0;
}
