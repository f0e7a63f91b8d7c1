# desc: TLS descriptors (-mtls-dialect=gnu2, R_X86_64_TLSDESC): a linked lib and a dlopen()ed lib access their own and each other's __thread variables through TLSDESC, from main and from threads created before and after the dlopen
$CC $CFLAGS -fPIC -mtls-dialect=gnu2 -shared -o liba.so $SRC/a.c
$CC $CFLAGS -fPIC -mtls-dialect=gnu2 -shared -o libd.so $SRC/d.c -L. -la -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -o exe $SRC/main.c -L. -la -ldl -pthread -Wl,-rpath,'$ORIGIN'
readelf -rW liba.so libd.so | grep -q TLSDESC
