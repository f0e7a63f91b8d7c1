# desc: COPY relocation of versioned variables: the lib exports tbl@V1 and tbl@@V2 (different sizes) and counter@V1; a non-PIE exe copies the V2 objects; the lib's own accessor sees the copies; an old exe built against a V1-only lib copies tbl@V1
cat > v1.map <<'M'
V1 { global: tbl; counter; get_tbl0; get_counter; inc_counter; local: *; };
M
cat > v2.map <<'M'
V1 { global: tbl; counter; get_tbl0; get_counter; inc_counter; local: *; };
V2 { global: tbl; } V1;
M
$CC $CFLAGS -fPIC -shared -o libv.so -Wl,--version-script=v1.map $SRC/v1.c -Wl,-soname,libv.so
$CC $CFLAGS -fno-pie -no-pie -o exe_old $SRC/main.c -L. -lv -Wl,-rpath,'$ORIGIN'
$CC $CFLAGS -fPIC -shared -o libv.so -Wl,--version-script=v2.map $SRC/v2.c -Wl,-soname,libv.so
$CC $CFLAGS -fno-pie -no-pie -o exe $SRC/main.c -L. -lv -Wl,-rpath,'$ORIGIN'
readelf -rW exe | grep -q R_X86_64_COPY
readelf -rW exe_old | grep -q R_X86_64_COPY
