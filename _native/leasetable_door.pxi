# Included by leasetable.pyx: the fast door's connections (ldpool-exec
# started from a plan cache file: HELLO + ACQUIRE_PROGRAM in one write, the
# replies read lazily, the connection held until the process ends).  Each
# is answered, and its end seen, here; a Python object per start cost the
# broker ~250 us of CPU, which on two processors is the starting program's.
# A connection that asks anything else is adopted by connection.py (adopt).

cdef bint hello_ok(Conn *c, const char *p, uint32_t n):
    """Exactly what service.py's HELLO accepts from a process, the name
    kept: 'proto=1', 'kind=process', then key=value items; the rest
    (an odd name, a guest...) goes to Python, which answers or refuses it."""
    cdef uint32_t i = 0, start, k, eq
    cdef int item = 0
    cdef bint named = False
    if n == 0 or p[n - 1] != 0:
        return False
    while i < n:
        start = i
        eq = 0
        while p[i] != 0:
            if p[i] == 61 and eq == 0:        # '='
                eq = i
            i += 1
        if eq == 0 or eq == start:             # no key
            return False
        if item == 0 and not (i - start == 7 and memcmp(p + start, b"proto=1", 7) == 0):
            return False
        if item == 1 and not (i - start == 12 and memcmp(p + start, b"kind=process", 12) == 0):
            return False
        if not named and eq - start == 4 and memcmp(p + start, b"name", 4) == 0:
            if i - eq - 1 > NAME_MAX_LEN:
                return False
            for k in range(eq + 1, i):
                if p[k] < 32 or p[k] > 126:
                    return False
            memcpy(c.name, p + eq + 1, i - eq - 1)
            c.name[i - eq - 1] = 0
            named = True
        item += 1
        i += 1
    return item >= 2

cdef void new_native(LeaseTable t, int ep, int fd) except *:
    """A connection just accepted: into the door's set, or closed."""
    cdef int32_t pid
    cdef uint32_t uid, gid
    if lt_peercred(fd, &pid, &uid, &gid) < 0 or lt_add(ep, fd) < 0:
        lt_drop(ep, fd)
        return
    t._conn(fd)
    cdef Conn *c = &t.conns[fd]
    memset(c, 0, sizeof(Conn))
    c.native, c.active, c.process = 1, 1, 1
    c.client = t.next_client
    t.next_client += 1
    c.pid, c.uid, c.gid = pid, uid, gid
    t.nnative += 1
    t.door_accepted += 1

cdef void native_end(LeaseTable t, int ep, int fd, double *now) except *:
    """EOF or error: its leases go, it is logged, the descriptor is closed."""
    cdef Conn *c = &t.conns[fd]
    cdef int n = t._release_all(c, now)
    if c.hello or n:
        msg = (f"client {c.client} (process pid {c.pid} uid {c.uid} gid {c.gid}"
               f"{' ' if c.name[0] else ''}{(<char *>c.name).decode('ascii')}) gone, "
               f"{n} leases released").encode()
        if t.log_fd >= 0:
            lt_log(t.log_fd, msg, len(msg))
        else:
            t.gone.append(msg.decode())
    memset(c, 0, sizeof(Conn))
    t.nnative -= 1
    lt_drop(ep, fd)

cdef size_t native_hello(LeaseTable t, IO *io, Conn *c, const char *p, size_t avail):
    """The first frame of a native connection, if it is an acceptable HELLO:
    its reply put in obuf, the bytes consumed returned; else 0."""
    cdef uint32_t hdr[2]
    if avail < 8 or t.hello_reply == NULL:
        return 0
    memcpy(hdr, p, 8)
    if hdr[1] != OP_HELLO or hdr[0] > avail - 8 or not hello_ok(c, p + 8, hdr[0]):
        return 0
    ensure_out(io, t.hello_len)
    memcpy(io.obuf, t.hello_reply, t.hello_len)
    c.hello = c.fd_pending = 1
    return 8 + hdr[0]


cdef door_loop(LeaseTable t, int lfd, mutex, adopt):
    """Accept, read, answer; a connection that asks for more leaves the
    set for adopt(fd, unsent, rest) (connection.py, on the event loop).
    Each batch holds the state's mutex: the event loop's evictions and
    consistency checks take it too, so no decision of theirs straddles
    one of these grants or releases."""
    cdef int fds[MAXEV]
    cdef uint32_t evs[MAXEV]
    cdef int ep = lt_epoll(), n, i, m, fd
    cdef bint closing = False
    if ep < 0:
        raise OSError("fast door: cannot make its epoll set")
    try:
        if lt_add(ep, lfd) < 0:
            raise OSError("fast door: cannot watch its socket")
        while not closing:
            with nogil:
                n = lt_wait(ep, fds, evs, MAXEV, -1)
            if n < 0:
                break
            up = None
            mutex.acquire()
            try:
                # a failure here must not stop the door: starting programs
                # would block in connect() once its backlog is full
                m = 0
                for i in range(n):
                    if fds[i] != lfd:
                        fds[m], evs[m] = fds[i], evs[i]
                        m += 1
                        continue
                    while True:
                        fd = lt_accept1(lfd)
                        if fd >= 0:
                            new_native(t, ep, fd)
                            continue
                        if fd == -2:
                            with nogil:          # out of descriptors: the queue waits
                                lt_pause_ms(50)
                        closing = fd == -3
                        break
                if m:
                    up = serve_ready(t, &t.door_io, ep, fds, evs, m, None)
            except Exception as e:      # a bug: said in the log (service.py's tick), and on
                t.gone.append(f"fast door: {type(e).__name__}: {e}")
            finally:
                mutex.release()
            if up:
                for fd, _ev, unsent, rest in up:
                    lt_del(ep, fd)
                    adopt(fd, unsent, rest)
    finally:
        lt_drop(-1, ep)
