/* backtrace_symbols and backtrace_symbols_fd for pooled code: glibc's own
 * ask its internal _dl_addr, which knows only ld.so's objects, so pooled
 * functions would come out as bare addresses.  These ask the launcher's
 * dladdr (pooled objects first, then ld.so) and print exactly glibc 2.36's
 * formats (debug/backtracesyms.c, debug/backtracesymsfd.c):
 *   backtrace_symbols:    FILE(SYM+0xOFF) [0xADDR]   or [0xADDR]
 *   backtrace_symbols_fd: FILE(SYM+0xOFF)[0xADDR]\n  or [0xADDR]\n
 * with the offset from the load bias when no symbol covers the address. */
#include "ldp.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

struct where { int named; const char *file, *sym; char sign; uint64_t off; int with_paren; };

static void locate(void *addr, struct where *w, int fd_form)
{
    Dl_info info;
    struct link_map *map = NULL;
    memset(w, 0, sizeof *w);
    if (!ldp_dladdr1(addr, &info, (void **)&map, RTLD_DL_LINKMAP) || !info.dli_fname || !info.dli_fname[0]) return;
    w->named = 1;
    w->file = info.dli_fname;
    w->sym = info.dli_sname;
    uint64_t bias = map ? map->l_addr : 0;
    /* the fd form leaves out "(...)" for an unnamed address in an object
     * loaded at bias 0; the string form always has it */
    w->with_paren = !fd_form || w->sym || bias;
    uint64_t base = w->sym ? (uint64_t)info.dli_saddr : bias;
    if (!fd_form && !w->sym && !base) { w->sign = 0; return; }
    if ((uint64_t)addr >= base) w->sign = '+', w->off = (uint64_t)addr - base;
    else w->sign = '-', w->off = base - (uint64_t)addr;
}

char **ldp_backtrace_symbols(void *const *array, int size)
{
    if (size < 0) size = 0;
    struct where *w = malloc(sizeof *w * (size ? size : 1));
    if (!w) return NULL;
    size_t total = size * sizeof(char *);
    for (int i = 0; i < size; i++) {
        locate(array[i], &w[i], 0);
        total += w[i].named ? strlen(w[i].file) + (w[i].sym ? strlen(w[i].sym) : 0) + 3 + 16 + 3 + 16 + 6 : 5 + 16 + 1;
    }
    char **out = malloc(total);
    if (out) {
        char *last = (char *)(out + size);
        for (int i = 0; i < size; i++) {
            out[i] = last;
            if (!w[i].named)
                last += 1 + sprintf(last, "[%p]", array[i]);
            else if (!w[i].sign)
                last += 1 + sprintf(last, "%s(%s) [%p]", w[i].file, w[i].sym ? w[i].sym : "", array[i]);
            else
                last += 1 + sprintf(last, "%s(%s%c%#lx) [%p]", w[i].file, w[i].sym ? w[i].sym : "", w[i].sign,
                                    w[i].off, array[i]);
        }
    }
    free(w);
    return out;
}

void ldp_backtrace_symbols_fd(void *const *array, int size, int fd)
{
    for (int i = 0; i < size; i++) {
        struct where w;
        char hex[24], addr[24];
        struct iovec iov[9];
        int n = 0;
        locate(array[i], &w, 1);
        if (w.named) {
            iov[n++] = (struct iovec){(void *)w.file, strlen(w.file)};
            if (w.with_paren) {
                iov[n++] = (struct iovec){"(", 1};
                if (w.sym) iov[n++] = (struct iovec){(void *)w.sym, strlen(w.sym)};
                iov[n++] = (struct iovec){w.sign == '-' ? "-0x" : "+0x", 3};
                iov[n++] = (struct iovec){hex, (size_t)snprintf(hex, sizeof hex, "%lx", w.off)};
                iov[n++] = (struct iovec){")", 1};
            }
        }
        iov[n++] = (struct iovec){"[0x", 3};
        iov[n++] = (struct iovec){addr, (size_t)snprintf(addr, sizeof addr, "%lx", (unsigned long)array[i])};
        iov[n++] = (struct iovec){"]\n", 2};
        (void)!writev(fd, iov, n);
    }
}
