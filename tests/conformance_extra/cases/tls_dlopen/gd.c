__thread int gd_var = 42;
__thread char gd_buf[64] = "init-image";
int *gd_addr(void) { return &gd_var; }
const char *gd_str(void) { return gd_buf; }
