__thread int a_var = 5;
int a_bump(int k) { a_var += k; return a_var; }
