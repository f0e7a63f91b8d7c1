prog ./my-prog
prog "$B/my-prog"
