/* placeholder: replaced by the launcher issue */
#include <stdio.h>
int main(int argc, char **argv) { fprintf(stderr, "ldpool-exec: not implemented yet\n"); return 127; }
