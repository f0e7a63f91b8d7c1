int fault_read(volatile int *p) { return *p; }
