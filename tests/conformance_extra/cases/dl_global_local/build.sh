# desc: dlopen RTLD_LOCAL vs RTLD_GLOBAL: a LOCAL lib's symbols are invisible to RTLD_DEFAULT and to a later lib's lookup; re-dlopen with RTLD_GLOBAL promotes it; RTLD_NOLOAD|RTLD_GLOBAL promotion
$CC $CFLAGS -fPIC -shared -o liba.so $SRC/a.c
$CC $CFLAGS -fPIC -shared -o libb.so $SRC/b.c -Wl,--allow-shlib-undefined
$CC $CFLAGS -o exe $SRC/main.c -ldl -Wl,-rpath,'$ORIGIN'
