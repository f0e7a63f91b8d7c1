#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <spawn.h>
#include <sys/wait.h>
extern char **environ;
int lib_double(int); void lib_call_and_jump(void (*)(jmp_buf *), jmp_buf *); void lib_longjmp(jmp_buf *, int);
static void cb(jmp_buf *env) { lib_longjmp(env, 33); }
static int st(pid_t p) { int s; waitpid(p, &s, 0); return WIFEXITED(s) ? WEXITSTATUS(s) : 1000 + WTERMSIG(s); }
int main(int argc, char **argv)
{
    if (argc > 1) { printf("child run: %s, lib_double=%d\n", argv[1], lib_double(argc)); return 10 + argc; }
    setvbuf(stdout, 0, _IONBF, 0);
    pid_t p = fork();
    if (p == 0) _exit(lib_double(4));
    printf("fork child status %d\n", st(p));
    p = fork();
    if (p == 0) { execv(argv[0], (char *[]){argv[0], "exec", 0}); _exit(99); }
    printf("fork+exec status %d\n", st(p));
    p = vfork();
    if (p == 0) { execv(argv[0], (char *[]){argv[0], "vfork", "x", 0}); _exit(98); }
    printf("vfork+exec status %d\n", st(p));
    if (posix_spawn(&p, argv[0], 0, 0, (char *[]){argv[0], "spawn", 0}, environ) == 0) printf("posix_spawn status %d\n", st(p));
    jmp_buf env; volatile int n = 0;
    int v = setjmp(env);
    if (v == 0) { n++; lib_call_and_jump(cb, &env); puts("not reached"); }
    printf("longjmp returned %d after %d call(s)\n", v, n);
    return 0;
}
