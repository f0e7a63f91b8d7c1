prog ./exe
prog ./exe_plain
prog LD_PRELOAD=$B/libmymalloc.so ./exe_plain
