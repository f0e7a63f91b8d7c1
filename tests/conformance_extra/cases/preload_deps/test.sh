prog ./exe
prog LD_PRELOAD=$B/libpre.so ./exe
prog_err 'missing_at_bind_now_q' LD_BIND_NOW=1 ./exe
