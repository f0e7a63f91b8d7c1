void not_defined_anywhere_q(void);
int ok_fn(void) { return 3; }
int bad_fn(void) { not_defined_anywhere_q(); return 4; }
