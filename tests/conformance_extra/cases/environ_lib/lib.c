#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
extern char **environ;
char ***CAT(lib_, environ_addr)(void) { return &environ; }
const char *CAT(lib_, get)(const char *n) { return getenv(n); }
void CAT(lib_, set)(const char *n, const char *v) { setenv(n, v, 1); }
int CAT(lib_, count)(const char *prefix) { int c = 0; for (char **e = environ; e && *e; e++) c += !strncmp(*e, prefix, strlen(prefix)); return c; }
