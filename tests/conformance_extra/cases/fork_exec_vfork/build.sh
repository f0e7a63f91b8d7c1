# desc: process creation from a pooled program: fork (child calls into a lib, exits with a status), fork+exec of itself via argv[0] (the child runs the program again), vfork+execv, posix_spawn of itself; longjmp from a lib callback back into the exe across DSO frames
$CC $CFLAGS -fPIC -shared -o liblj.so $SRC/lib.c
$CC $CFLAGS -o exe $SRC/main.c -L. -llj -Wl,-rpath,'$ORIGIN'
