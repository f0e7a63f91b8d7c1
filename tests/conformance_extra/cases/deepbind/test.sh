prog ./exe
prog ./exe deep
