prog ./exe
prog ./exe_old
