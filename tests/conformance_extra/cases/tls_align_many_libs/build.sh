# desc: static TLS layout: exe and lib __thread variables with 64- and 4096-byte alignment (checked in main and in a thread); an exe with 60 DT_NEEDED libs each with a constructor and a __thread counter (init order = reverse link order of the leaves)
$CC $CFLAGS -fPIC -shared -o libal.so $SRC/al.c
for i in $(seq -w 1 60); do v=$((10#$i)); echo "#include <stdio.h>
__thread int t$i = $v; __attribute__((constructor)) static void c(void) { extern int ctor_log(int); ctor_log($v); }
int f$i(void) { return t$i++; }" > m$i.c; $CC $CFLAGS -fPIC -shared -o libm$i.so m$i.c -Wl,--allow-shlib-undefined; done
libs=$(for i in $(seq -w 1 60); do echo -n " -lm$i"; done)
echo "int f01(void);" > calls.c
for i in $(seq -w 1 60); do echo "int f$i(void);"; done > calls.c
echo "int call_all(void) { return 0" >> calls.c
for i in $(seq -w 1 60); do echo " + f$i()"; done >> calls.c
echo "; }" >> calls.c
$CC $CFLAGS -rdynamic -o exe $SRC/main.c calls.c -Wl,--no-as-needed -L. -lal $libs -Wl,-rpath,'$ORIGIN' -pthread
