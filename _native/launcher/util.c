/* Messages: one line on stderr, prefixed like ld.so's ("PROG: ..."). */
#include "ldp.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char *ldp_progname = "ldpool-exec";
int ldp_debug;

/* ld.so's "OBJ: version `V' not found (required by X)", which it exits 1 for */
int ldp_version_error(const char *msg)
{
    const char *v = strstr(msg, ": version `");
    return v && strstr(v, "' not found (required by ") != NULL;
}

static void vline(const char *fmt, va_list ap)
{
    char msg[1024], buf[1200];
    if (vsnprintf(msg, sizeof msg, fmt, ap) < 0) msg[0] = 0;
    /* what ld.so itself would have reported carries ld.so's prefix, the
     * program's argv[0], so users and scripts see the native text */
    const char *who = "ldpool-exec";
    if (!strncmp(msg, "symbol lookup error: ", 21) || !strncmp(msg, "error while loading shared libraries: ", 38) ||
        ldp_version_error(msg))
        who = ldp_progname;
    int n = snprintf(buf, sizeof buf - 1, "%s: %s", who, msg);
    if (n < 0) n = 0;
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
