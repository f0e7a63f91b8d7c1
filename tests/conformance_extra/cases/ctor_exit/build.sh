# desc: a library constructor calls exit(9) before main: already-registered atexit handlers and destructors of initialised objects run, buffered stdout is flushed, main never runs; a lib ctor that calls _exit(4) flushes nothing
$CC $CFLAGS -fPIC -shared -o libfirst.so $SRC/first.c
$CC $CFLAGS -fPIC -shared -o libquit.so $SRC/quit.c -L. -lfirst -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -o exe $SRC/main.c -Wl,--no-as-needed -L. -lquit -Wl,-rpath,'$ORIGIN'
