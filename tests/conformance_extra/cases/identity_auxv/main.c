#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <link.h>
#include <sys/auxv.h>
void lib_identity(void);
extern void _start(void);
extern char *__progname;
static const ElfW(Phdr) *first_phdr; static int first_phnum; static ElfW(Addr) ldso_base; static int seen;
static int cb(struct dl_phdr_info *i, size_t s, void *d)
{
    if (seen++ == 0) { first_phdr = i->dlpi_phdr; first_phnum = i->dlpi_phnum; }
    if (i->dlpi_name && strstr(i->dlpi_name, "ld-linux")) ldso_base = i->dlpi_addr;
    return 0;
}
int main(int argc, char **argv)
{
    dl_iterate_phdr(cb, 0);
    printf("AT_PHDR is the program's: %s\n", (void *)getauxval(AT_PHDR) == (void *)first_phdr ? "yes" : "no");
    printf("AT_PHNUM: %s\n", getauxval(AT_PHNUM) == (unsigned long)first_phnum ? "yes" : "no");
    printf("AT_ENTRY is _start: %s\n", getauxval(AT_ENTRY) == (unsigned long)_start ? "yes" : "no");
    unsigned long b = getauxval(AT_BASE);
    printf("AT_BASE sensible: %s\n", b == 0 || b == ldso_base ? "yes" : "no");
    printf("AT_RANDOM: %s, AT_HWCAP: %s, AT_PAGESZ: %lu, AT_EXECFN: %s\n", getauxval(AT_RANDOM) ? "set" : "0",
           getauxval(AT_HWCAP) ? "set" : "0", getauxval(AT_PAGESZ), getauxval(AT_EXECFN) ? "set" : "0");
    printf("argv[0]=%s invocation_name=%s short=%s __progname=%s\n", argv[0], program_invocation_name, program_invocation_short_name, __progname);
    lib_identity();
    return 0;
}
