prog XTRA_A=one ./exe
