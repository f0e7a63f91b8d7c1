# desc: LD_PRELOAD of a lib with its own dependency and constructors: init order (preload's dep, exe's libs, preload) and fini order follow glibc; a preload's symbol used by the exe's lib; LD_BIND_NOW=1 turns a lazily bound missing function into a start-up failure (prog_err)
$CC $CFLAGS -fPIC -shared -o libpdep.so $SRC/lib.c -DNAME=pdep
$CC $CFLAGS -fPIC -shared -o libpre.so $SRC/lib.c -DNAME=pre -DCALLS=pdep_fn -L. -lpdep -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -fPIC -shared -o liblib.so $SRC/lib.c -DNAME=lib -Wl,-z,lazy
$CC $CFLAGS -fPIC -shared -o libund.so $SRC/und.c -Wl,-z,lazy
$CC $CFLAGS -Wl,-z,lazy -o exe $SRC/main.c -Wl,--no-as-needed -L. -llib -lund -Wl,-rpath,'$ORIGIN' -Wl,--allow-shlib-undefined
