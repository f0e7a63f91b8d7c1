# Included by leasetable.pyx: the hot path itself (reading the ready
# sockets, answering the hot requests, handing the rest back).  Kept apart
# so each file reads in one sitting.

cdef Entry *entry_for(LeaseTable t, Conn *c, const char *p, uint32_t n, bint fresh=False,
                      bint files=True):
    """A valid entry for this payload and client, else NULL.  files=False:
    the client maps the plan published with this entry (the fast door's
    clients: their plan cache file is this entry's acquisition, checked
    against the files by the launcher), so its files need no stat here."""
    cdef uint64_t h = fnv(p, n)
    cdef Entry *e = t.et[t._eslot(h, p, n)]
    cdef int k, ok = 0
    cdef uint64_t sid[5]
    cdef PyObject *pub
    if e == NULL or e.version != t.version:
        return NULL
    for k in range(e.nuids):
        if e.uids[k] == c.uid:
            ok = 1
    if not ok:
        return NULL                   # Python notes the uid on the images first
    if c.process:
        # the plan cache file must be there for the next start
        if t.published is None:
            return NULL
        pub = PyDict_GetItem(t.published, <object>e.payload_obj)
        if pub != e.ks.acq:
            return NULL
    # the files are stat'ed once per batch, after every recv of the
    # batch: a file replaced before any of its requests was sent is seen
    if files and (fresh or e.checked != t.batch):
        for k in range(e.nfiles):
            if lt_stat(e.files[k].path, sid) < 0 or memcmp(sid, e.files[k].id, sizeof(sid)) != 0:
                return NULL
        if not fresh:
            e.checked = t.batch
    return e

cdef int ensure_out(IO *io, size_t more) except -1:
    if more > io.ocap:
        io.ocap = more * 2
        io.obuf = <char *>realloc(io.obuf, io.ocap)
        if not io.obuf:
            raise MemoryError()
    return 0

cdef uint64_t grant(LeaseTable t, int fd, Conn *c, Entry *e) except 0:
    """A new native lease of connection fd on entry e's images."""
    cdef NLease *l = <NLease *>malloc(sizeof(NLease))
    if l == NULL:
        raise MemoryError()
    l.id, l.client, l.fd, l.ks, l.prev = t.next_id, c.client, fd, e.ks, NULL
    t.next_id += 1
    e.ks.refcnt += 1
    t._inc_ks(e.ks)
    t._insert(l)
    l.next = c.leases
    if c.leases != NULL:
        c.leases.prev = l
    c.leases = l
    return l.id


cdef acquire_plan(LeaseTable t, int fd, bytes payload):
    """For connection.py's own reads (a new connection's HELLO + ACQUIRE
    arrive together): the plan with a new native lease, or None."""
    cdef Conn *c = &t.conns[fd]
    cdef Entry *e = entry_for(t, c, payload, len(payload), True)
    if e == NULL:
        return None
    cdef uint64_t lid = grant(t, fd, c, e)
    t.hits += 1
    plan = e.reply[8:e.rlen]
    memcpy(<char *>plan + LEASE_OFF, &lid, 8)       # our own new bytes object
    return plan


cdef int answer(LeaseTable t, IO *io, int fd, Conn *c, uint32_t op, const char *p, uint32_t n,
              size_t *olen, bint acquire, double *now) except -1:
    """Answer one request into obuf; 0 if it is not a hot one."""
    cdef Entry *e
    cdef NLease *l
    cdef uint64_t lid = 0
    cdef uint32_t k, hdr[2]
    if op == OP_ACQUIRE_PROGRAM:
        if not acquire:
            return 0
        e = entry_for(t, c, p, n, False, not io.door)
        if e == NULL:
            return 0
        ensure_out(io, olen[0] + e.rlen)
        lid = grant(t, fd, c, e)
        memcpy(io.obuf + olen[0], e.reply, e.rlen)
        memcpy(io.obuf + olen[0] + 8 + LEASE_OFF, &lid, 8)
        olen[0] += e.rlen
    elif op == OP_RELEASE:
        # exactly "lease=N\0"; anything else (object=, a Python lease) goes up
        # at most 19 digits: no u64 overflow (ids are below 2^63)
        if n < 8 or n > 26 or memcmp(p, b"lease=", 6) != 0 or p[n - 1] != 0:
            return 0
        for k in range(6, n - 1):
            if p[k] < 48 or p[k] > 57:
                return 0
            lid = lid * 10 + <uint64_t>(p[k] - 48)
        l = t._find(lid)
        if l == NULL or l.fd != fd or l.client != c.client:
            return 0
        t._release_lease(l, now)
        ensure_out(io, olen[0] + 8)
        hdr[0], hdr[1] = 0, OP_RELEASE | REPLY
        memcpy(io.obuf + olen[0], hdr, 8)
        olen[0] += 8
    elif op == OP_PING and n == 0:
        ensure_out(io, olen[0] + 8)
        hdr[0], hdr[1] = 0, OP_PING | REPLY
        memcpy(io.obuf + olen[0], hdr, 8)
        olen[0] += 8
    else:
        return 0
    t.hits += 1
    return 1

cdef serve_batch(LeaseTable t, int epfd, mutex):
    cdef int fds[MAXEV]
    cdef uint32_t evs[MAXEV]
    cdef int n = lt_wait(epfd, fds, evs, MAXEV, 0)
    if n <= 0:
        return 0, None
    return n, serve_ready(t, &t.loop_io, epfd, fds, evs, n, mutex)

cdef list serve_ready(LeaseTable t, IO *io, int epfd, int *fds, uint32_t *evs, int n, mutex):
    """The ready sockets fds[:n] of epfd: what connection.py must do, as
    [(fd, events, unsent, rest)] (see LeaseTable.serve)."""
    cdef int got[MAXEV]
    cdef size_t at[MAXEV], length[MAXEV]
    cdef int i, j, m = 0, fd
    cdef Conn *c
    cdef ssize_t r
    cdef size_t off, olen, sent, used = 0, end, k
    cdef uint32_t hdr[2]
    cdef double now = -1
    cdef bint acquire = mutex is None
    up = []
    # every ready socket is read first, then answered: a file stat'ed
    # while answering is then stat'ed after every request of the batch
    # was sent (once per entry and batch, not per request)
    for i in range(n):
        fd = fds[i]
        if fd >= t.nconn or not t.conns[fd].active:
            up.append((fd, evs[i], None, None))
            continue
        c = &t.conns[fd]
        if not evs[i] & EPOLLIN:
            if c.native:
                native_end(t, epfd, fd, &now)
                continue
            c.active = 0
            t.handed += 1
            up.append((fd, evs[i], None, None))
            continue
        if RECV - used < 4096:
            continue                     # level-triggered: next round
        r = lt_recv(fd, io.rbuf + used, min(RECV - used, 65536))
        if r == -2:
            continue
        if r <= 0:                       # EOF or error: connection.py ends it
            if c.native:
                native_end(t, epfd, fd, &now)
                continue
            c.active = 0
            t.handed += 1
            up.append((fd, evs[i], None, None))
            continue
        got[m], at[m], length[m] = i, used, r
        used += r
        m += 1
    if m == 0:
        return up
    t.batch += 1
    held = None
    if not acquire and mutex.acquire(False):
        # a build thread evicting holds it: acquires go up meanwhile
        held, acquire = mutex, True
    try:
        for j in range(m):
            i = got[j]
            fd = fds[i]
            c = &t.conns[fd]
            off, end = at[j], at[j] + length[j]
            olen = sent = 0
            io.broken = 0
            if c.native and not c.hello:
                k = native_hello(t, io, c, io.rbuf + off, end - off)
                if k:
                    off += k
                    olen = t.hello_len
            # nothing before a HELLO: a native connection without one goes up whole
            while (c.hello or not c.native) and end - off >= 8:
                memcpy(hdr, io.rbuf + off, 8)
                if hdr[0] > end - off - 8:
                    break
                if not answer(t, io, fd, c, hdr[1], io.rbuf + off + 8, hdr[0], &olen, acquire, &now):
                    break
                off += 8 + hdr[0]
                if olen >= FLUSH_AT:
                    sent = flush_out(t, io, fd, c, olen)
                    if sent < olen:
                        break
                    olen = sent = 0
            if olen and not sent:
                sent = flush_out(t, io, fd, c, olen)
            if io.broken and c.native:
                # the program is over before its announcement was read (a
                # short one usually is): what was granted goes with it
                native_end(t, epfd, fd, &now)
                continue
            if sent < olen or off < end:
                c.active = 0
                t.handed += 1
                up.append((fd, evs[i], io.obuf[sent:olen] if sent < olen else None,
                           io.rbuf[off:end] if off < end else None))
    finally:
        if held is not None:
            held.release()
    return up

cdef size_t flush_out(LeaseTable t, IO *io, int fd, Conn *c, size_t olen):
    cdef size_t done = 0
    cdef ssize_t s
    while done < olen:
        if c.fd_pending:            # the pool descriptor rides on the HELLO reply's first byte
            s = lt_send_fd(fd, io.obuf + done, olen - done, t.pool_fd)
            if s > 0:
                c.fd_pending = 0
        else:
            s = lt_send(fd, io.obuf + done, olen - done)
        if s <= 0:                  # full (0) or broken (<0): connection.py's send decides
            io.broken = s < 0
            break
        done += <size_t>s
    return done
