# desc: RTLD_DEEPBIND: a plugin opened with RTLD_DEEPBIND binds its own references (and its dependency's) before the global scope's, while the exe keeps its own definitions; without DEEPBIND the exe's definition wins
$CC $CFLAGS -fPIC -shared -o libpdep.so $SRC/pdep.c
$CC $CFLAGS -fPIC -shared -o libplug.so $SRC/plug.c -L. -lpdep -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -rdynamic -o exe $SRC/main.c -ldl -Wl,-rpath,'$ORIGIN'
