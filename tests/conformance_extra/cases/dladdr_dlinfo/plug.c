int plug_func(int x) { return x + 1; }
