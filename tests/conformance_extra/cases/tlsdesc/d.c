extern __thread int a_var;
__thread int d_var = 70;
static __thread int d_local[100] = { 1 };
int d_work(int k) { d_var += k; d_local[99] += k; a_var += 1; return d_var * 1000 + a_var * 10 + d_local[0] + d_local[99]; }
