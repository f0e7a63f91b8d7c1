# desc: LD_PRELOAD: a preload interposes a non-glibc library function and a glibc one (puts, getenv) with RTLD_NEXT forwarding; two preloads (space and colon separated) stack in order; a missing preload file is reported and the program still runs
$CC $CFLAGS -fPIC -shared -o libmine.so $SRC/mine.c
$CC $CFLAGS -fPIC -shared -o libpre1.so $SRC/pre.c -DTAG='"pre1"' -ldl
$CC $CFLAGS -fPIC -shared -o libpre2.so $SRC/pre.c -DTAG='"pre2"' -ldl
$CC $CFLAGS -o exe $SRC/main.c -L. -lmine -Wl,-rpath,'$ORIGIN'
