# desc: dlclose refcounting: opened twice, closed once it stays (same state); closed twice its destructors run, dependency destructors after the plugin's; RTLD_NODELETE and -z nodelete libs survive dlclose with their state; atexit in a dlclosed lib runs at dlclose
$CC $CFLAGS -fPIC -shared -o libdep.so $SRC/dep.c
$CC $CFLAGS -fPIC -shared -o libplug.so $SRC/plug.c -L. -ldep -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -fPIC -shared -o libnd.so $SRC/nd.c -Wl,-z,nodelete
$CC $CFLAGS -fPIC -shared -o libnd2.so $SRC/nd.c
$CC $CFLAGS -o exe $SRC/main.c -ldl -Wl,-rpath,'$ORIGIN'
readelf -d libnd.so | grep -q NODELETE
