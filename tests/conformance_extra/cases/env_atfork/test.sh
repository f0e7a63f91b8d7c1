prog ./exe "" "two words" -x
prog LD_LIBRARY_PATH=/nonexistent-dir LD_BIND_NOW=1 ./exe a
