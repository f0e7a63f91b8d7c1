# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""The broker's reference counts and the leases of its hot path, in C, and
the hot path itself: the client sockets' read side for the two requests
that dominate (ACQUIRE_PROGRAM answered from the plan cache, RELEASE
lease=N; PING too), handled without a Python object per request.

LeaseTable (one per broker epoch; host_broker/refcount.py is its Python
face and the only other writer):
* image counters: refs and idle time per small image id (RefCounts maps
  image keys to ids);
* native leases: id -> (client, the image ids it holds), granted by
  serve(); RefCounts.leases turns one into a Python Lease when Python code
  needs it (dlopen, dlclose, RECLAIM...), without touching the counts;
* plan cache entries, keyed by the exact ACQUIRE_PROGRAM payload, each a
  reply frame template (lease patched in), its image ids, the files to
  stat and the uids already noted on its images.  Registered by the
  service after a Python grant; all of them are dropped (version bump)
  when an image leaves or is renamed, so an entry never outlives an image.

serve(epfd, mutex) reads the ready client sockets of the broker's epoll set.
A connection the Python side marked active (activate: idle, said HELLO) is
read here; its frames are answered in order while they are hot requests,
and at the first one that is not (or a partial frame, an unsent reply, an
EOF) the connection is handed back: deactivated, the unsent reply bytes and
the unread bytes returned for connection.py to queue in order."""
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.dict cimport PyDict_GetItem
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy, memcmp, memset
from libc.stdlib cimport malloc, calloc, realloc, free

cdef extern from "leasetable_sys.h":
    int lt_stat(const char *path, uint64_t *out)
    double lt_now()
    int lt_wait(int epfd, int *fds, uint32_t *evs, int max, int timeout) nogil
    ssize_t lt_recv(int fd, char *buf, size_t n)
    ssize_t lt_send(int fd, const char *buf, size_t n)
    ssize_t lt_send_fd(int fd, const char *buf, size_t n, int passfd)
    int lt_peercred(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid)
    void lt_drop(int epfd, int fd)
    int lt_epoll()
    int lt_add(int ep, int fd)
    void lt_del(int ep, int fd)
    int lt_accept1(int lfd)
    void lt_pause_ms(int ms) nogil
    void lt_log(int fd, const char *msg, size_t n)
    uint32_t EPOLLIN

DEF RECV = 262144
DEF FLUSH_AT = 65536          # reply bytes gathered before a send
DEF MAXEV = 256
DEF NUIDS = 8
DEF LEASE_OFF = 136           # struct ldp_plan_hdr: u64 lease
DEF OP_HELLO = 1
DEF OP_ACQUIRE_PROGRAM = 2
DEF OP_RELEASE = 4
DEF OP_PING = 6
DEF REPLY = 0x100
DEF NAME_MAX_LEN = 64         # a client's name, as service.py keeps it

cdef struct KeySet:           # the image ids of one acquisition, shared by its leases
    int refcnt
    int n
    PyObject *acq             # the Python Acquisition (for promotion)
    int ids[1]

cdef struct FileId:
    char *path
    uint64_t id[5]

cdef struct Entry:
    uint64_t hash
    char *payload
    uint32_t plen
    char *reply               # the whole reply frame, lease 0
    size_t rlen
    KeySet *ks
    FileId *files
    int nfiles
    uint64_t version
    uint32_t uids[NUIDS]
    int nuids
    uint64_t checked          # the serve() batch whose stat calls found the files unchanged
    PyObject *payload_obj     # for the plan cache's published check

cdef struct NLease:
    uint64_t id
    int64_t client
    int fd
    KeySet *ks
    NLease *prev
    NLease *next

cdef struct Conn:
    int64_t client
    uint32_t uid
    char active
    char process
    char native               # a fast-door connection only this table serves (not connection.py's)
    char hello                # native: its HELLO was answered here
    char fd_pending           # native: ... but the pool descriptor was not sent with it
    int32_t pid
    uint32_t gid
    char name[NAME_MAX_LEN + 1]
    NLease *leases


cdef struct IO:              # one reader's buffers: the event loop's, the fast door's
    char *rbuf
    char *obuf
    size_t ocap
    bint broken               # the last flush_out met a closed connection
    bint door                 # the fast door's (entry_for: files=False)


cdef inline uint64_t fnv(const char *p, size_t n):
    cdef uint64_t h = 0xcbf29ce484222325ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ <uint8_t>p[i]) * 0x100000001b3ULL
    return h


cdef void io_init(IO *io):
    io.rbuf = <char *>malloc(RECV)
    io.ocap = FLUSH_AT * 2
    io.obuf = <char *>malloc(io.ocap) if io.rbuf else NULL
    io.broken = io.door = 0


cdef void ks_drop(KeySet *ks):
    ks.refcnt -= 1
    if ks.refcnt == 0:
        Py_DECREF(<object>ks.acq)
        free(ks)


cdef class LeaseTable:
    cdef int64_t *refs
    cdef double *idle
    cdef char *idle_set
    cdef int nimg, capimg
    cdef uint64_t next_id
    cdef public uint64_t version
    cdef NLease **lt          # open addressing, linear probing, backward-shift delete
    cdef size_t ltcap, nleases
    cdef Entry **et           # plan cache entries, open addressing
    cdef size_t etcap, nentries
    cdef Conn *conns
    cdef int nconn
    cdef IO loop_io, door_io
    cdef public uint64_t hits, handed      # requests answered here / connections handed back
    cdef uint64_t batch                    # serve() calls
    cdef object published                  # the plan cache's {payload: acq} (None: no checks)
    cdef int64_t next_client
    cdef char *hello_reply                 # the HELLO reply frame (set_hello: the fast door is open)
    cdef size_t hello_len
    cdef int pool_fd
    cdef public int nnative                # connections only this table knows
    cdef public uint64_t door_accepted, door_adopted   # fast-door connections: all, and Python's
    cdef public int log_fd                 # native ends logged here (-1: in gone, for Python)
    cdef public list gone                  # [(client, pid, uid, gid, name, leases)] of ended native ones

    def __cinit__(self, uint64_t lease_prefix=0):
        self.next_id = (lease_prefix << 32) + 1
        self.next_client = 1
        self.pool_fd = -1
        self.gone = []
        self.capimg = 64
        self.refs = <int64_t *>calloc(self.capimg, sizeof(int64_t))
        self.idle = <double *>calloc(self.capimg, sizeof(double))
        self.idle_set = <char *>calloc(self.capimg, 1)
        self.ltcap = 1024
        self.lt = <NLease **>calloc(self.ltcap, sizeof(NLease *))
        self.etcap = 2048
        self.et = <Entry **>calloc(self.etcap, sizeof(Entry *))
        self.nconn = 0
        self.conns = NULL
        self.log_fd = -1
        io_init(&self.loop_io)
        io_init(&self.door_io)
        self.door_io.door = 1
        if not (self.refs and self.idle and self.idle_set and self.lt and self.et
                and self.loop_io.obuf and self.door_io.obuf):
            raise MemoryError()

    def __dealloc__(self):
        # a broker's table lives as long as the broker; tests make a few
        self.forget_entries()
        free(self.refs); free(self.idle); free(self.idle_set)
        free(self.lt); free(self.et); free(self.conns)
        free(self.loop_io.rbuf); free(self.loop_io.obuf); free(self.door_io.rbuf); free(self.door_io.obuf)
        free(self.hello_reply)

    # --- image counters -------------------------------------------------
    def new_image(self, double now):
        """A new image id: unreferenced, idle since `now`."""
        cdef int i = self.nimg
        if i == self.capimg:
            self.capimg *= 2
            self.refs = <int64_t *>realloc(self.refs, self.capimg * sizeof(int64_t))
            self.idle = <double *>realloc(self.idle, self.capimg * sizeof(double))
            self.idle_set = <char *>realloc(self.idle_set, self.capimg)
            if not (self.refs and self.idle and self.idle_set):
                raise MemoryError()
        self.refs[i], self.idle[i], self.idle_set[i] = 0, now, 1
        self.nimg += 1
        return i

    def invalidate(self):
        """An image left or was renamed: no cached entry is trusted any more."""
        self.version += 1

    def count(self, int i):
        return self.refs[i]

    def idle_time(self, int i):
        """When image i became unused, or None while it is used."""
        return self.idle[i] if self.idle_set[i] else None

    def set_idle(self, int i, t):
        if t is None:
            self.idle_set[i] = 0
        else:
            self.idle[i], self.idle_set[i] = t, 1

    def inc(self, ids):
        cdef int i
        for i in ids:
            self.refs[i] += 1
            self.idle_set[i] = 0

    def dec(self, ids, double now):
        cdef int i
        for i in ids:
            self.refs[i] -= 1
            if self.refs[i] == 0:
                self.idle[i], self.idle_set[i] = now, 1

    cdef inline void _inc_ks(self, KeySet *ks):
        cdef int k, i
        for k in range(ks.n):
            i = ks.ids[k]
            self.refs[i] += 1
            self.idle_set[i] = 0

    cdef inline void _dec_ks(self, KeySet *ks, double *now):
        cdef int k, i
        for k in range(ks.n):
            i = ks.ids[k]
            self.refs[i] -= 1
            if self.refs[i] == 0:
                if now[0] < 0:
                    now[0] = lt_now()
                self.idle[i], self.idle_set[i] = now[0], 1

    # --- lease ids and native leases --------------------------------------
    def next_lease_id(self):
        cdef uint64_t i = self.next_id
        self.next_id += 1
        return i

    cdef size_t _slot(self, uint64_t lid):
        cdef size_t m = self.ltcap - 1
        cdef size_t h = (lid * 0x9E3779B97F4A7C15ULL) >> 20
        h &= m
        while self.lt[h] != NULL and self.lt[h].id != lid:
            h = (h + 1) & m
        return h

    cdef NLease *_find(self, uint64_t lid):
        return self.lt[self._slot(lid)]

    cdef int _insert(self, NLease *l) except -1:
        cdef size_t i, old
        cdef NLease **o
        if (self.nleases + 1) * 2 > self.ltcap:
            o, old = self.lt, self.ltcap
            self.ltcap *= 2
            self.lt = <NLease **>calloc(self.ltcap, sizeof(NLease *))
            if not self.lt:
                raise MemoryError()
            for i in range(old):
                if o[i] != NULL:
                    self.lt[self._slot(o[i].id)] = o[i]
            free(o)
        self.lt[self._slot(l.id)] = l
        self.nleases += 1
        return 0

    cdef void _remove(self, NLease *l):
        """Out of the table and of its connection's list (not freed)."""
        cdef size_t m = self.ltcap - 1
        cdef size_t i = self._slot(l.id), j = i, k
        self.lt[i] = NULL
        while True:                     # backward shift: no tombstones
            j = (j + 1) & m
            if self.lt[j] == NULL:
                break
            k = ((self.lt[j].id * 0x9E3779B97F4A7C15ULL) >> 20) & m
            if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
                self.lt[i] = self.lt[j]
                self.lt[j] = NULL
                i = j
        self.nleases -= 1
        if l.prev != NULL:
            l.prev.next = l.next
        elif l.fd >= 0 and l.fd < self.nconn and self.conns[l.fd].leases == l:
            self.conns[l.fd].leases = l.next
        if l.next != NULL:
            l.next.prev = l.prev

    def has_lease(self, uint64_t lid):
        return self._find(lid) != NULL

    def native_leases(self):
        """[(id, client, image ids, acquisition)] of every native lease."""
        cdef size_t i
        cdef NLease *l
        out = []
        for i in range(self.ltcap):
            l = self.lt[i]
            if l != NULL:
                out.append((l.id, l.client, [l.ks.ids[k] for k in range(l.ks.n)], <object>l.ks.acq))
        return out

    def take(self, uint64_t lid):
        """Hand a native lease over to Python (counts unchanged):
        (client, image ids, acquisition), or None if it is not native."""
        cdef NLease *l = self._find(lid)
        if l == NULL:
            return None
        out = (l.client, [l.ks.ids[k] for k in range(l.ks.n)], <object>l.ks.acq)
        self._remove(l)
        ks_drop(l.ks)
        free(l)
        return out

    def release(self, uint64_t lid):
        """Release a native lease; False if there is none with that id."""
        cdef NLease *l = self._find(lid)
        cdef double now = -1
        if l == NULL:
            return False
        self._release_lease(l, &now)
        return True

    cdef void _release_lease(self, NLease *l, double *now):
        """Its counts go down; out of the table and its connection's list; freed."""
        self._dec_ks(l.ks, now)
        self._remove(l)
        ks_drop(l.ks)
        free(l)

    cdef int _release_all(self, Conn *c, double *now):
        """Every lease of a connection that ends; their number."""
        cdef int n = 0
        while c.leases != NULL:
            self._release_lease(c.leases, now)
            n += 1
        return n

    # --- connections ------------------------------------------------------
    cdef int _conn(self, int fd) except -1:
        cdef int n
        if fd >= self.nconn:
            n = max(fd + 1, self.nconn * 2, 64)
            self.conns = <Conn *>realloc(self.conns, n * sizeof(Conn))
            if not self.conns:
                raise MemoryError()
            memset(&self.conns[self.nconn], 0, (n - self.nconn) * sizeof(Conn))
            self.nconn = n
        return 0

    def activate(self, int fd, int64_t client, uint32_t uid, bint process):
        """connection.py is idle on this connection: read it here."""
        self._conn(fd)
        cdef Conn *c = &self.conns[fd]
        if c.leases != NULL and c.client != client:
            raise ValueError(f"descriptor {fd} still holds leases of client {c.client}")
        c.client, c.uid, c.process, c.active = client, uid, process, 1

    def acquire(self, int fd, int64_t client, uint32_t uid, bint process, bytes payload):
        """A cached program acquire read by Python (not yet hot connection):
        the plan, its lease native (released by close(fd) like the others),
        or None.  The plan's files are stat'ed now."""
        self._conn(fd)
        cdef Conn *c = &self.conns[fd]
        if c.leases != NULL and c.client != client:
            raise ValueError(f"descriptor {fd} still holds leases of client {c.client}")
        c.client, c.uid, c.process = client, uid, process
        return acquire_plan(self, fd, payload)

    def deactivate(self, int fd):
        if fd < self.nconn:
            self.conns[fd].active = 0

    def close(self, int fd):
        """The connection is closing: release its native leases; their number."""
        cdef double now = -1
        if fd >= self.nconn:
            return 0
        cdef Conn *c = &self.conns[fd]
        cdef int n = self._release_all(c, &now)
        c.active = c.hello = c.fd_pending = c.native = 0
        c.client = 0
        return n

    # --- the fast door's native connections -------------------------------
    def new_client_id(self):
        """Client ids come from here, native connections' and Python's alike."""
        cdef int64_t i = self.next_client
        self.next_client += 1
        return i

    def set_hello(self, bytes frame, int pool_fd):
        """Open the fast door: its connections' HELLO is answered with this
        reply frame, pool_fd riding on it."""
        free(self.hello_reply)
        self.hello_reply = <char *>malloc(len(frame))
        if not self.hello_reply:
            raise MemoryError()
        memcpy(self.hello_reply, <char *>frame, len(frame))
        self.hello_len, self.pool_fd = len(frame), pool_fd

    def adopt(self, int fd):
        """A native connection handed back becomes connection.py's: (client,
        pid, uid, gid, hello answered, name, pool descriptor still to send),
        or None if fd is not a native connection."""
        if fd >= self.nconn or not self.conns[fd].native:
            return None
        cdef Conn *c = &self.conns[fd]
        c.native, c.active = 0, 0
        self.nnative -= 1
        self.door_adopted += 1
        return (c.client, c.pid, c.uid, c.gid, bool(c.hello), (<char *>c.name).decode("ascii"),
                bool(c.fd_pending))

    def native_clients(self):
        """[(client, pid, uid, gid, hello, name)] of the native connections."""
        cdef int fd
        cdef Conn *c
        out = []
        for fd in range(self.nconn):
            c = &self.conns[fd]
            if c.native:
                out.append((c.client, c.pid, c.uid, c.gid, bool(c.hello), (<char *>c.name).decode("ascii")))
        return out

    def take_gone(self):
        out, self.gone = self.gone, []
        return out

    def door(self, int lfd, mutex, adopt):
        """The fast door's thread, until lfd is shut down (door_loop)."""
        door_loop(self, lfd, mutex, adopt)

    # --- plan cache entries ---------------------------------------------------
    cdef size_t _eslot(self, uint64_t h, const char *p, uint32_t n):
        cdef size_t m = self.etcap - 1
        cdef size_t i = h & m
        cdef Entry *e
        while True:
            e = self.et[i]
            if e == NULL or (e.hash == h and e.plen == n and memcmp(e.payload, p, n) == 0):
                return i
            i = (i + 1) & m

    cdef void _free_entry(self, Entry *e):
        cdef int k
        free(e.payload)
        free(e.reply)
        for k in range(e.nfiles):
            free(e.files[k].path)
        free(e.files)
        ks_drop(e.ks)
        Py_DECREF(<object>e.payload_obj)
        free(e)

    def forget_entries(self):
        cdef size_t i
        for i in range(self.etcap):
            if self.et[i] != NULL:
                self._free_entry(self.et[i])
                self.et[i] = NULL
        self.nentries = 0

    def set_published(self, published):
        self.published = published

    def known(self, bytes payload, acq, uint32_t uid):
        """Whether register(payload, ..., uid, acq) would change nothing."""
        cdef uint32_t n = len(payload)
        cdef Entry *e = self.et[self._eslot(fnv(payload, n), payload, n)]
        cdef int k
        if e == NULL or e.ks.acq != <PyObject *>acq or e.version != self.version:
            return False
        for k in range(e.nuids):
            if e.uids[k] == uid:
                return True
        return e.nuids == NUIDS

    def register(self, bytes payload, bytes reply, ids, files, uint32_t uid, acq):
        """After a Python grant of the cached acquisition `acq` for this exact
        payload: answer it here from now on.  reply: the whole reply frame
        (lease 0); ids: its image ids; files: [(path bytes, (dev, ino, size,
        mtime_ns, ctime_ns))] as Acquirer._valid checks them; uid: noted on
        every image of acq for that client."""
        cdef uint32_t n = len(payload)
        cdef uint64_t h = fnv(payload, n)
        cdef size_t i = self._eslot(h, payload, n)
        cdef Entry *e = self.et[i]
        cdef int k
        if e != NULL and e.ks.acq == <PyObject *>acq and e.version == self.version:
            for k in range(e.nuids):
                if e.uids[k] == uid:
                    return
            if e.nuids < NUIDS:
                e.uids[e.nuids] = uid
                e.nuids += 1
            return
        if e != NULL:
            self._free_entry(e)
            self.et[i] = NULL
            self.nentries -= 1
        if (self.nentries + 1) * 2 > self.etcap:
            self.forget_entries()        # re-registered as they come back: cheap
            i = self._eslot(h, payload, n)
        if len(reply) < 8 + LEASE_OFF + 8:
            raise ValueError("reply too short for a plan")
        e = <Entry *>calloc(1, sizeof(Entry))
        nids = len(ids)
        e.ks = <KeySet *>malloc(sizeof(KeySet) + nids * sizeof(int))
        e.payload = <char *>malloc(n + 1)
        e.reply = <char *>malloc(len(reply))
        e.files = <FileId *>calloc(len(files) + 1, sizeof(FileId))
        if not (e.ks and e.payload and e.reply and e.files):
            raise MemoryError()
        e.ks.refcnt, e.ks.n, e.ks.acq = 1, nids, <PyObject *>acq
        Py_INCREF(acq)
        for k in range(nids):
            e.ks.ids[k] = ids[k]
        e.hash, e.plen = h, n
        memcpy(e.payload, <char *>payload, n)
        e.rlen = len(reply)
        memcpy(e.reply, <char *>reply, e.rlen)
        for k, (path, sid) in enumerate(files):
            e.files[k].path = <char *>malloc(len(path) + 1)
            memcpy(e.files[k].path, <char *>path, len(path) + 1)
            for j in range(5):
                e.files[k].id[j] = sid[j]
            e.nfiles += 1
        e.version = self.version
        e.uids[0], e.nuids = uid, 1
        e.payload_obj = <PyObject *>payload
        Py_INCREF(payload)
        self.et[i] = e
        self.nentries += 1

    def serve(self, int epfd, mutex=None):
        """One epoll_wait(0) of the broker's set: (events seen, [(fd, events,
    unsent, rest)] for connection.py): unsent/rest None for an event of a
    connection Python reads itself; else the connection was handed back
    (unsent: reply bytes to send first; rest: bytes read, not answered).
    mutex: the state's lock against evictions by the build thread; while
    it is held elsewhere, acquires go up (they would wait for it)."""
        return serve_batch(self, epfd, mutex)


include "leasetable_door.pxi"
include "leasetable_serve.pxi"
