#ifndef WHO
#define WHO "platform dir"
#endif
const char *tok_who(void) { return WHO; }
