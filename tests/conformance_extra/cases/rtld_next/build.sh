# desc: dlsym RTLD_NEXT chains: two wrapper libs each forward a custom function and a second custom function with a cached next pointer to the next definition; RTLD_DEFAULT finds the first; RTLD_NEXT from the last definition gives NULL
$CC $CFLAGS -fPIC -shared -o libw1.so $SRC/w.c -DNAME='"w1"' -ldl
$CC $CFLAGS -fPIC -shared -o libw2.so $SRC/w.c -DNAME='"w2"' -ldl
$CC $CFLAGS -fPIC -shared -o libreal.so $SRC/real.c -ldl
$CC $CFLAGS -o exe $SRC/main.c -Wl,--no-as-needed -L. -lw1 -lw2 -lreal -ldl -Wl,-rpath,'$ORIGIN'
