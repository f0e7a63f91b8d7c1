int sfunc(void) { return 5; }
int sdata = 6;
int sym_calls(void) { return sfunc() * 10 + sdata; }
