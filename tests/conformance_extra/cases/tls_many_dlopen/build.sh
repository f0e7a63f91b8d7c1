# desc: many TLS modules: 12 dlopen()ed libs each with a __thread array and initializer, opened, used from main and a thread, closed in a different order and reopened (module ids reused); values always come from the init image
for i in 0 1 2 3 4 5 6 7 8 9 10 11; do $CC $CFLAGS -fPIC -shared -o libt$i.so $SRC/t.c -DN=$i; done
$CC $CFLAGS -o exe $SRC/main.c -ldl -pthread -Wl,-rpath,'$ORIGIN'
