# desc: dlmopen(LM_ID_NEWLM) gives a second, separate copy of a lib (own data, own namespace id) next to the dlopen()ed one; dlopen of a PIE executable fails with a message naming it an executable
$CC $CFLAGS -fPIC -shared -o liblm.so $SRC/lib.c
echo 'int main(void) { return 0; }' > pie.c
$CC $CFLAGS -fPIE -pie -o pie pie.c
$CC $CFLAGS -o exe $SRC/main.c -ldl
