# desc: dladdr/dladdr1 (RTLD_DL_SYMENT, RTLD_DL_LINKMAP) on exe (-rdynamic), lib and dlopen()ed symbols and on an address inside a function; dlinfo RTLD_DI_LINKMAP/RTLD_DI_ORIGIN/RTLD_DI_SERINFO (sizes and paths)
mkdir -p sub
$CC $CFLAGS -fPIC -shared -o liblib.so $SRC/lib.c
$CC $CFLAGS -fPIC -shared -o sub/libplug.so $SRC/plug.c
$CC $CFLAGS -rdynamic -o exe $SRC/main.c -L. -llib -ldl -Wl,-rpath,'$ORIGIN:$ORIGIN/sub'
