#include <cstdio>
#include <csetjmp>
#include <csignal>
#include <functional>
#include <iostream>
#include <dlfcn.h>
extern "C" int fault_read(volatile int *); extern "C" void handler_install(sigjmp_buf *);
int main()
{
    sigjmp_buf env; volatile int tries = 0;
    handler_install(&env);
    int sig = sigsetjmp(env, 1);
    if (sig == 0) { tries++; fault_read((volatile int *)16); std::puts("not reached"); }
    std::printf("back from signal %d after %d try, SIGSEGV still handled: ", sig, tries);
    sig = sigsetjmp(env, 1);
    if (sig == 0) fault_read((volatile int *)16);
    std::printf("yes (%d)\n", sig);
    std::fflush(stdout);
    void *h = dlopen("libio.so", RTLD_NOW | RTLD_LOCAL);
    auto run = (int (*)(std::function<int(int)> *))dlsym(h, "io_run");
    std::function<int(int)> cb = [](int x) { std::printf("exe callback(%d)\n", x); return x * 2; };
    std::fflush(stdout);
    int r = run(&cb);
    std::cout << "io_run returned " << r << std::endl;
    std::printf("printf after cout\n");
    return 0;
}
