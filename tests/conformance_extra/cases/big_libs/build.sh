# desc: size extremes: a lib with a 256 MiB .bss (mostly untouched, first/last bytes written and read) and a lib with 10000 exported functions and 10000 data pointers (10k GLOB_DAT/RELATIVE relocations) used by an exe through 10000 PLT/GOT references; checksums
python3 - "$SRC" <<'PY'
N = 10000
with open("many.c", "w") as f:
    for i in range(N): f.write(f"int f{i}(void) {{ return {i}; }}\n")
    f.write("int (*const ptrs[])(void) = {" + ",".join(f"f{i}" for i in range(N)) + "};\n")
    f.write(f"int many_count = {N};\n")
with open("use.c", "w") as f:
    for i in range(N): f.write(f"int f{i}(void);\n")
    f.write("long use_all(void) { long s = 0;\n")
    for i in range(N): f.write(f" s += f{i}();\n")
    f.write(" return s; }\n")
PY
$CC -O0 -w -fPIC -shared -o libmany.so many.c
$CC $CFLAGS -fPIC -shared -o libbss.so $SRC/bss.c
$CC -O0 -w -o exe $SRC/main.c use.c -L. -lmany -lbss -Wl,-rpath,'$ORIGIN'
