# desc: the program is a valid ELF executable without execute permission (natively EACCES; an explicit "ld.so PROG" would run it: this case is for the execve path only)
echo 'int main(void) { return 0; }' > m.c
$CC $CFLAGS -o noexec_prog m.c
chmod a-x noexec_prog
