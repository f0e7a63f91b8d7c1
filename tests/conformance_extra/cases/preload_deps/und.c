void missing_at_bind_now_q(void);
void und_call(int really) { if (really) missing_at_bind_now_q(); }
