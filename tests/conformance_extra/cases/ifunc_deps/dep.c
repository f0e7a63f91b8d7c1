int dep_pick(int has_sse2) { return has_sse2 ? 2 : 1; }
