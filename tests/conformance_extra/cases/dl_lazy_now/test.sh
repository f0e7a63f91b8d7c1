prog ./exe
prog_err 'not_defined_anywhere_q' ./exe call
prog LD_BIND_NOW=1 ./exe
