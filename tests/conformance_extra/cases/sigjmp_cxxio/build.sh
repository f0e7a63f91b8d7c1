# desc: siglongjmp out of a SIGSEGV handler living in a lib back into the exe (the fault happens in another lib); a dlopen()ed C++ plugin using iostream, std::cout interleaved with printf after sync_with_stdio, std::locale and a std::function callback into the exe
$CC $CFLAGS -fPIC -shared -o libfault.so $SRC/fault.c
$CC $CFLAGS -fPIC -shared -o libhandler.so $SRC/handler.c
$CXX $CXXFLAGS -fPIC -shared -o libio.so $SRC/io.cc
$CXX $CXXFLAGS -o exe $SRC/main.cc -Wl,--no-as-needed -L. -lfault -lhandler -ldl -Wl,-rpath,'$ORIGIN'
