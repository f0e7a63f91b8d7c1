int b2(void); int a1(void) { return 100 + b2(); }
