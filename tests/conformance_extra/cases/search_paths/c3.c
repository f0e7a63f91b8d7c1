int c3(void) { return 3; }
