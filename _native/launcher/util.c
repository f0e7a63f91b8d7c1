/* Messages: one line on stderr, prefixed like ld.so's ("PROG: ..."). */
#include "ldp.h"
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

const char *ldp_progname = "ldpool-exec";
int ldp_debug;

static void vline(const char *fmt, va_list ap)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "ldpool-exec: ");
    if (n < 0 || n >= (int)sizeof buf) n = 0;
    int m = vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
    if (m < 0) m = 0;
    n += m;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    /* write(2) rather than stdio: stderr may be a COPY-relocated object of
     * the program by now */
    ssize_t w = write(2, buf, n);
    (void)w;
}

void ldp_die(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(fmt, ap);
    va_end(ap);
    _exit(status);
}

void ldp_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(fmt, ap);
    va_end(ap);
}
