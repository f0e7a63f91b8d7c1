# desc: IFUNC resolvers that do real work: a lib resolver reads cpu features (__builtin_cpu_supports, getauxval(AT_HWCAP)) and calls a function of its dependency; an exe IFUNC (PIE, IRELATIVE) whose resolver reads cpu features; all selected implementations agree with a direct computation
$CC $CFLAGS -fPIC -shared -o libdep.so $SRC/dep.c
$CC $CFLAGS -fPIC -shared -o libif.so $SRC/if.c -L. -ldep -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -o exe $SRC/main.c -L. -lif -ldep -Wl,-rpath,'$ORIGIN'
readelf -rW exe | grep -q IRELATIV
