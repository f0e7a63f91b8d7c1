# desc: incompatible libraries on the search path are skipped: LD_LIBRARY_PATH lists dirs holding a 32-bit (ELFCLASS32) libpick.so, an EM_AARCH64-patched one and a text file named libpick.so before the right one; glibc goes on to the next dir
mkdir -p bad32 badarm badtext good
$CC $CFLAGS -fPIC -shared -o good/libpick.so $SRC/pick.c
$CC $CFLAGS -o exe $SRC/main.c -Lgood -lpick
cp good/libpick.so badarm/libpick.so
printf '\xb7\x00' | dd of=badarm/libpick.so bs=1 seek=18 conv=notrunc status=none
# a 32-bit object: build one if the toolchain can, else patch EI_CLASS (the header is then garbage for 64-bit readers, as for a real ELF32 file)
if ! $CC -m32 -fPIC -shared -o bad32/libpick.so $SRC/pick.c 2>/dev/null; then
  cp good/libpick.so bad32/libpick.so; printf '\x01' | dd of=bad32/libpick.so bs=1 seek=4 conv=notrunc status=none
fi
echo 'this is not a library' > badtext/libpick.so
