prog QUIT_MODE=exit ./exe
prog QUIT_MODE=_exit ./exe
