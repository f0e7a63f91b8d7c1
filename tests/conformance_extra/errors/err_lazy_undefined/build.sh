# desc: lazy binding: the exe calls a function no object defines; main runs and prints, then the call fails with a symbol lookup error (exit 127)
echo 'void gone_fn_lazy(void); void f(void) { gone_fn_lazy(); }' > lib.c
$CC $CFLAGS -fPIC -shared -Wl,-z,lazy -o libund.so lib.c
echo '#include <stdio.h>
void f(void); int main(void) { puts("main runs"); fflush(stdout); f(); return 0; }' > main.c
$CC $CFLAGS -Wl,-z,lazy -o exe main.c -Wl,--allow-shlib-undefined -L. -lund -Wl,-rpath,'$ORIGIN'
