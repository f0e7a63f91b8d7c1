const char *who_dep(void) { return "pdep"; }
