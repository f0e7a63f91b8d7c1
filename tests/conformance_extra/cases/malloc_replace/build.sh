# desc: a malloc replacement: a linked lib (and, in a second run, an LD_PRELOAD) defines malloc/free/calloc/realloc/posix_memalign (a bump allocator counting calls); glibc's own allocations (strdup, fopen, printf buffers) and the exe's go to it
$CC $CFLAGS -fPIC -shared -o libmymalloc.so $SRC/mymalloc.c
$CC $CFLAGS -o exe $SRC/main.c -Wl,--no-as-needed -L. -lmymalloc -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -o exe_plain $SRC/main.c -DPLAIN -ldl
