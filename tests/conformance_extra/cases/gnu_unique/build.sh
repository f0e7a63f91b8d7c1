# desc: STB_GNU_UNIQUE: an inline static member and a template static variable used by two libs (one linked, one dlopen()ed RTLD_LOCAL) and the exe are one object process-wide
$CXX $CXXFLAGS -fPIC -shared -o liba.so -I$SRC $SRC/a.cc
$CXX $CXXFLAGS -fPIC -shared -o libp.so -I$SRC $SRC/p.cc
$CXX $CXXFLAGS -o exe -I$SRC $SRC/main.cc -L. -la -Wl,-rpath,'$ORIGIN' -ldl
readelf -sW liba.so | grep -q UNIQUE
readelf -sW libp.so | grep -q UNIQUE
