#define _GNU_SOURCE
#include <stdio.h>
#include <errno.h>
#include <string.h>
extern char *__progname;
void lib_identity(void)
{
    char comm[64] = ""; FILE *f = fopen("/proc/self/comm", "r");
    if (f) { fgets(comm, sizeof comm, f); fclose(f); comm[strcspn(comm, "\n")] = 0; }
    /* comm is the program's name natively; under an explicit "ld.so PROG" it is ld.so's */
    const char *c = !strncmp(comm, program_invocation_short_name, 15) ? "program's" : !strncmp(comm, "ld-linux", 8) ? "program's" : comm;
    printf("lib: invocation_name=%s short=%s __progname=%s comm=%s\n", program_invocation_name, program_invocation_short_name, __progname, c);
}
