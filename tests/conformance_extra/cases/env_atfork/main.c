#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/auxv.h>
#include <sys/wait.h>
extern char **environ;
int af_child_flag(void);
static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }
int main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) printf("argv[%d] = [%s]\n", i, argv[i]);
    char *v[256]; int n = 0;
    for (char **e = environ; *e && n < 256; e++) if (!strncmp(*e, "LD_", 3)) v[n++] = *e;
    qsort(v, n, sizeof *v, cmp);
    for (int i = 0; i < n; i++) printf("env %s\n", v[i]);
    printf("AT_SECURE = %lu\n", getauxval(AT_SECURE));
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) _exit(af_child_flag());
    int s; waitpid(p, &s, 0);
    printf("child exited %d (child handler ran: 7)\n", WEXITSTATUS(s));
    return 0;
}
