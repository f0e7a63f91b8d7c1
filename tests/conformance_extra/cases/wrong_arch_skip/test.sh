prog LD_LIBRARY_PATH=$B/bad32:$B/badarm:$B/good ./exe
prog LD_LIBRARY_PATH=$B/badarm:$B/bad32:$B/good ./exe
prog_err 'libpick' LD_LIBRARY_PATH=$B/badtext:$B/good ./exe
prog_err 'libpick' LD_LIBRARY_PATH=$B/bad32:$B/badarm ./exe
