int a_value(void) { return 17; }
