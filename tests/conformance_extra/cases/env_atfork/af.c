#include <stdio.h>
#include <pthread.h>
static void pre(void) { printf("atfork: prepare\n"); fflush(stdout); }
static void parent(void) { printf("atfork: parent\n"); fflush(stdout); }
static int in_child; /* printing from the child would race with the parent */
static void child(void) { in_child = 7; }
int af_child_flag(void) { return in_child; }
__attribute__((constructor)) static void init(void) { pthread_atfork(pre, parent, child); }
