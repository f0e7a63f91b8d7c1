#include <stdio.h>
const char *who(void) { return "plugin"; }
const char *who_dep(void);
void plug_report(char *buf, int n) { snprintf(buf, n, "who=%s who_dep=%s", who(), who_dep()); }
