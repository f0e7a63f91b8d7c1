prog ./exe_chain
prog ./exe_tok
prog_err 'libcwd' ./exe_cwd
cd cwdlib
prog LD_LIBRARY_PATH=/nonexistent::/also-missing ../exe_cwd
prog LD_LIBRARY_PATH=:/nonexistent ../exe_cwd
prog LD_LIBRARY_PATH=/nonexistent: ../exe_cwd
cd ..
prog ./exe_abs
