# desc: C++ thread_local with non-trivial constructors and destructors in the exe, in a linked lib and in a dlopen()ed lib: constructed on first use per thread, destroyed at thread exit (in reverse order) and at exit for the main thread
$CXX $CXXFLAGS -fPIC -shared -o liblib.so $SRC/lib.cc
$CXX $CXXFLAGS -fPIC -shared -o libtldl.so $SRC/dl.cc
$CXX $CXXFLAGS -o exe $SRC/main.cc -L. -llib -Wl,-rpath,'$ORIGIN' -ldl -pthread
