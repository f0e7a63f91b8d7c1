# desc: process identity and auxv: getauxval AT_PHDR/AT_PHNUM/AT_ENTRY describe the program (checked against dl_iterate_phdr and _start), AT_BASE is 0 or ld.so's base, AT_RANDOM/AT_HWCAP/AT_PAGESZ/AT_EXECFN present; program_invocation_name/short_name, __progname and /proc/self/comm, read from the exe and from a lib
$CC $CFLAGS -fPIC -shared -o libid.so $SRC/lib.c
$CC $CFLAGS -o my-prog $SRC/main.c -L. -lid -Wl,-rpath,'$ORIGIN'
