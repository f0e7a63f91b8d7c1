# desc: protected visibility and -Bsymbolic: the exe defines functions/data also defined by libs; a lib's protected function and -Bsymbolic lib's internal calls bind to themselves, default-visibility refs bind to the exe's; function pointer equality for a protected function
$CC $CFLAGS -fPIC -shared -o libprot.so $SRC/prot.c
$CC $CFLAGS -fPIC -shared -o libsym.so $SRC/sym.c -Wl,-Bsymbolic
$CC $CFLAGS -o exe $SRC/main.c -L. -lprot -lsym -Wl,-rpath,'$ORIGIN'
readelf -sW libprot.so | grep -q PROTECTED
