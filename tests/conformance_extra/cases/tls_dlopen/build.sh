# desc: TLS in a dlopen()ed lib: global-dynamic __thread vars (with init image) used by threads that existed before the dlopen and by new ones; an initial-exec (-ftls-model=initial-exec) __thread var in a dlopen()ed lib served from the static TLS surplus
$CC $CFLAGS -fPIC -shared -o libgd.so $SRC/gd.c
$CC $CFLAGS -fPIC -ftls-model=initial-exec -shared -o libie.so $SRC/ie.c
$CC $CFLAGS -o exe $SRC/main.c -ldl -pthread -Wl,-rpath,'$ORIGIN'
readelf -d libie.so | grep -q STATIC_TLS
