# desc: C++ in a dlclose()d plugin: it holds STB_GNU_UNIQUE symbols (std::string templates) so glibc keeps it loaded (nodelete): no destructors at dlclose, static and function-local statics destroyed at exit in reverse order before the dependency; a plugin std::string survives; reopening does not construct again
$CXX $CXXFLAGS -fPIC -shared -o libdep.so $SRC/dep.cc
$CXX $CXXFLAGS -fPIC -shared -o libplug.so $SRC/plug.cc -L. -ldep -Wl,-rpath,'$ORIGIN'
$CXX $CXXFLAGS -o exe $SRC/main.cc -ldl -Wl,-rpath,'$ORIGIN'
