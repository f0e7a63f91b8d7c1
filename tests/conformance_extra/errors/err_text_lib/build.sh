# desc: a DT_NEEDED library that is a text file (found first, not ELF): glibc reports it and fails
echo 'int textlib_fn(void) { return 1; }' > l.c
$CC $CFLAGS -fPIC -shared -o libtextlib.so l.c
echo 'int textlib_fn(void); int main(void) { return textlib_fn(); }' > m.c
$CC $CFLAGS -o exe m.c -L. -ltextlib -Wl,-rpath,'$ORIGIN'
echo 'INPUT(this is a linker script, not a library)' > libtextlib.so
