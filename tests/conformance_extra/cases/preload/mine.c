int mine_value(void) { return 1; }
