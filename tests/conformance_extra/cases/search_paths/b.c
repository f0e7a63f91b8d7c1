int c3(void); int b2(void) { return 20 + c3(); }
