int a_value(void);
int b_calls_a(void) { return a_value() + 1; }
