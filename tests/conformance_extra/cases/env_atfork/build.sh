# desc: what the program sees of its environment and process: LD_* variables exactly as given (LD_LIBRARY_PATH, LD_BIND_NOW, LD_PRELOAD unset), argv with empty and spaced arguments, AT_SECURE 0; pthread_atfork handlers registered in a lib run in order around fork
$CC $CFLAGS -fPIC -shared -o libaf.so $SRC/af.c -pthread
$CC $CFLAGS -o exe $SRC/main.c -Wl,--no-as-needed -L. -laf -Wl,-rpath,'$ORIGIN' -pthread
