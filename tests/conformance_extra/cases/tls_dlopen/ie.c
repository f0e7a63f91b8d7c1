__thread int ie_var = 99;
int ie_bump(int k) { ie_var += k; return ie_var; }
