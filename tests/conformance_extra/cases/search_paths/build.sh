# desc: library search: LD_LIBRARY_PATH with empty entries (= cwd) and a missing dir; a $ORIGIN-relative RUNPATH chain of depth 3 (exe -> d1/liba -> d1/d2/libb -> d1/d2/d3/libc3); $LIB and $PLATFORM tokens in RPATH; DT_NEEDED by absolute path
mkdir -p d1/d2/d3 cwdlib
$CC $CFLAGS -fPIC -shared -o d1/d2/d3/libc3.so $SRC/c3.c
$CC $CFLAGS -fPIC -shared -o d1/d2/libb.so $SRC/b.c -Ld1/d2/d3 -lc3 -Wl,-rpath,'$ORIGIN/d3'
$CC $CFLAGS -fPIC -shared -o d1/liba.so $SRC/a.c -Ld1/d2 -lb -Wl,-rpath,'$ORIGIN/d2' -Wl,-rpath-link,d1/d2/d3
$CC $CFLAGS -o exe_chain $SRC/chain.c -Ld1 -la -Wl,-rpath,'$ORIGIN/d1' -Wl,-rpath-link,d1/d2:d1/d2/d3
# $PLATFORM and $LIB expand per machine/distro: provide every plausible expansion
for d in x86_64 haswell xeon_phi; do mkdir -p plat/$d; $CC $CFLAGS -fPIC -shared -o plat/$d/libtok.so $SRC/tok.c -DWHO='"platform dir"'; done
for d in lib/x86_64-linux-gnu lib64 lib; do mkdir -p $d; $CC $CFLAGS -fPIC -shared -o $d/libtok2.so $SRC/tok.c -DWHO='"LIB dir"' -Dtok_who=tok2_who; done
$CC $CFLAGS -o exe_tok $SRC/usetok2.c -Lplat/x86_64 -ltok -Llib -ltok2 -Wl,--disable-new-dtags,-rpath,'$ORIGIN/plat/$PLATFORM:$ORIGIN/$LIB'
$CC $CFLAGS -fPIC -shared -o cwdlib/libcwd.so $SRC/tok.c -DWHO='"cwd"'
$CC $CFLAGS -o exe_cwd $SRC/usetok.c -Lcwdlib -lcwd -DFN=tok_who
$CC $CFLAGS -fPIC -shared -o abs.so $SRC/tok.c -DWHO='"absolute"'
$CC $CFLAGS -o exe_abs $SRC/usetok.c "$B/abs.so"
readelf -d exe_abs | grep NEEDED | grep -q "$B/abs.so"
readelf -d exe_tok | grep -q 'PLATFORM'
