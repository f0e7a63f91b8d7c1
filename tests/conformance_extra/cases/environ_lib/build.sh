# desc: environ shared between exe, a lib and a dlopen()ed lib: setenv/unsetenv/putenv in one are seen by getenv and environ in the others; the lib's view of environ is the same pointer
$CC $CFLAGS -fPIC -shared -o libenv.so $SRC/lib.c
$CC $CFLAGS -fPIC -shared -o libdlenv.so $SRC/lib.c -Dlib_=dl_
$CC $CFLAGS -o exe $SRC/main.c -L. -lenv -ldl -Wl,-rpath,'$ORIGIN'
