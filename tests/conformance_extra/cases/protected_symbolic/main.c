#include <stdio.h>
int dfunc(void) { return 8; }
int sfunc(void) { return 9; }
int pfunc(void);
int prot_calls(void); int sym_calls(void); void *prot_pfunc_addr(void);
int main(void)
{
    printf("prot_calls = %d (protected self, default -> exe)\n", prot_calls());
    printf("sym_calls = %d (-Bsymbolic self)\n", sym_calls());
    printf("exe pfunc = %d, same address as lib's view: %s\n", pfunc(), (void *)pfunc == prot_pfunc_addr() ? "yes" : "no");
    return 0;
}
