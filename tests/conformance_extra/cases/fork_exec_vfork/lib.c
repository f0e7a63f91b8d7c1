#include <setjmp.h>
int lib_double(int x) { return 2 * x; }
void lib_call_and_jump(void (*cb)(jmp_buf *), jmp_buf *env) { volatile int depth = 1; cb(env); (void)depth; }
void lib_longjmp(jmp_buf *env, int v) { longjmp(*env, v); }
