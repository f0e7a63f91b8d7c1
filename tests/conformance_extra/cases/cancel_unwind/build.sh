# desc: pthread_cancel of a thread blocked inside a lib: C cleanup handlers (pthread_cleanup_push, -fexceptions) in the lib and C++ destructors of locals in another lib run during the forced unwind through pooled frames, in order; pthread_exit from a lib also unwinds; backtrace() from a lib finds the exe and lib frames
$CC $CFLAGS -fexceptions -fPIC -shared -o libc1.so $SRC/c1.c -pthread
$CXX $CXXFLAGS -fPIC -shared -o libcx.so $SRC/cx.cc -L. -lc1 -Wl,-rpath,'$ORIGIN' -pthread
$CC $CFLAGS -fexceptions -rdynamic -o exe $SRC/main.c -L. -lcx -lc1 -Wl,-rpath,'$ORIGIN' -pthread
