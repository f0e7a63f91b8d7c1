# desc: library constructors doing loader work: dl_iterate_phdr from a lib ctor sees the exe and the lib's dependencies (sorted basenames); a ctor that dlopen()s a plugin and calls it; a ctor that calls dlsym(RTLD_DEFAULT) for an exe symbol
$CC $CFLAGS -fPIC -shared -o libdep.so $SRC/dep.c
$CC $CFLAGS -fPIC -shared -o libplug.so $SRC/plug.c
$CC $CFLAGS -fPIC -shared -o libhook.so $SRC/hook.c -L. -ldep -ldl -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -rdynamic -o exe $SRC/main.c -Wl,--no-as-needed -L. -lhook -Wl,-rpath,'$ORIGIN'
