__attribute__((visibility("protected"))) int pfunc(void) { return 1; }
int dfunc(void) { return 2; }
__attribute__((visibility("protected"))) int pdata = 30;
int prot_calls(void) { return pfunc() * 100 + dfunc() * 10 + pdata; }
void *prot_pfunc_addr(void) { return (void *)pfunc; }
