prog ./exe
prog LD_PRELOAD=$B/libpre1.so ./exe
prog "LD_PRELOAD=$B/libpre1.so $B/libpre2.so" ./exe
prog "LD_PRELOAD=$B/libpre2.so:$B/libpre1.so" ./exe
prog LD_PRELOAD=libpre1.so LD_LIBRARY_PATH=$B ./exe
prog_err 'no-such-preload' LD_PRELOAD=$B/no-such-preload.so ./exe
