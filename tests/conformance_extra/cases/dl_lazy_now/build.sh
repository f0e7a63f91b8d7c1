# desc: RTLD_NOW vs RTLD_LAZY: a plugin with an undefined function fails dlopen(RTLD_NOW) naming it, loads with RTLD_LAZY and works until the missing function is called (the program then dies with a symbol lookup error, prog_err); LD_BIND_NOW turns LAZY into NOW
$CC $CFLAGS -fPIC -shared -o libplug.so $SRC/plug.c -Wl,-z,lazy
$CC $CFLAGS -o exe $SRC/main.c -ldl -Wl,-rpath,'$ORIGIN'
