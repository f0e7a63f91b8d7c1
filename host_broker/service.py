"""`ldpool broker`: the asyncio Unix-socket service that owns the pool.

Each connection (host_broker.connection) is a client; its leases die with
it, however it ends. Cache hits are answered on
the event loop; building images and plans runs in a worker thread under one
lock, so slow builds do not stall pings, releases and cached acquires."""
import asyncio
import concurrent.futures
import json
import os
import resource
import signal
import socket
import struct
import time

from host_broker.acquire import Acquirer, set_lease
from host_broker.connection import Connection, Hub
from host_broker.daemon import PRIORITIES, detach, gid_of, lock, prepare_dir, set_priority, stderr_log
from host_broker import journal, plancache
from host_broker.fastdoor import FastDoor
from host_broker.leaseops import LeaseOps
from host_broker.listener import listen_unix, unlink_if_ours
from host_broker.pool import DEFAULT_SIZE, parse_size
from host_broker.pool import unlink as pool_unlink
from host_broker.state import BrokerState
from host_broker.stats import stats_for
from loader import protocol as P
from loader.errors import BrokerError, LdpoolError

DEFAULT_LINGER = 120.0
_PEERCRED = struct.Struct("3i")
_HEADER_PACK = P.HEADER.pack


def add_arguments(p):
    p.add_argument("--socket", help="Unix socket path (default: $LDPOOL_SOCKET, else "
                   "$XDG_RUNTIME_DIR/ldpool/broker.sock, else /tmp/ldpool-$UID/broker.sock)")
    p.add_argument("--pool", help="POSIX shm name of the pool (default derived from the socket)")
    p.add_argument("--pool-size", default=str(DEFAULT_SIZE),
                   help="pool size, a power of two (default 1G)")
    p.add_argument("--linger", type=float, default=DEFAULT_LINGER,
                   help="seconds an unused image stays in the pool (default 120)")
    p.add_argument("--group", help="open the socket to this group (mode 0660)")
    p.add_argument("--idle-exit", type=float, default=0,
                   help="exit after this many seconds without clients (0: never)")
    p.add_argument("--text-in-pool", action="store_true",
                   help="keep whole images (text too) in the pool and map every page from it, for "
                        "clients that cannot see the host's files; by default the pool holds only "
                        "the pages relocation changes and host clients map the rest from the files")
    p.add_argument("--priority", choices=PRIORITIES, default="normal",
                   help="scheduling of the request path: normal (the default), high (nice -5, "
                        "needs root or CAP_SYS_NICE) or batch (SCHED_BATCH: never preempts a "
                        "starting program, but a waiting client may wait for a time slice: p99 "
                        "several ms on a busy machine); builds always run SCHED_BATCH")
    p.add_argument("--detach", action="store_true",
                   help="start in the background; return once the socket accepts connections")


class Client:
    __slots__ = ("id", "pid", "uid", "gid", "kind", "name", "hello", "since", "fd")

    def __init__(self, cid, pid, uid, gid, fd=-1):
        self.id, self.pid, self.uid, self.gid, self.fd = cid, pid, uid, gid, fd
        self.kind, self.name, self.hello, self.since = "?", "", False, time.time()

    @classmethod
    def of_native(cls, cid, pid, uid, gid, hello, name, fd=-1):
        """A fast-door client as the native table describes it (hello: it
        answered the client's HELLO, a process's)."""
        c = cls(cid, pid, uid, gid, fd)
        if hello:
            c.kind, c.name, c.hello = "process", name, True
        return c


class Broker(LeaseOps):
    def __init__(self, socket_path, pool_name, pool_size, linger, group=None, idle_exit=0,
                 log=None, text_in_pool=False, priority="normal"):
        self.socket_path, self.linger, self.group, self.idle_exit = socket_path, linger, group, idle_exit
        self.priority = priority
        self.log = log or stderr_log
        self.pool_name = pool_name or P.default_pool_name(socket_path)
        journal = os.path.join(os.path.dirname(socket_path), self.pool_name.strip("/") + ".journal")
        self.state = BrokerState(self.pool_name, pool_size, journal, linger, log=self.log,
                                 text_in_pool=text_in_pool)
        self.acquirer = Acquirer(self.state.store, log=self.log, public_only=bool(group))
        self.plans = plancache.PlanCache(plancache.plans_dir(socket_path), self.state, log=self.log)
        refs = self.state.refs
        # a lease granted by the native hot path gets its context when
        # Python code first needs it (dlopen)
        refs.context_of = lambda acq: (self.acquirer.lease_context(acq.context)
                                       if acq.context is not None else None)
        # the hot path serves a process only plans whose cache file is written
        refs.table.set_published(self.plans._published)
        if not self.state.recovered:
            self.plans.wipe()           # a new epoch; a re-attach keeps them (stamps decide)
        self.clients = {}
        self._build_lock = None
        self._stop = None
        self._last_active = time.monotonic()
        self._idle_exit = False
        self._hello_body = None         # the same for every client of this epoch

    # --- socket ---------------------------------------------------------------
    def bind(self):
        """Create the socket (0600, or 0660 for --group). Call after lock()."""
        # one descriptor per client: every running pooled program is one
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        path = self.socket_path
        if self.group:
            sock, self._sock_ino = listen_unix(path, 0o660, gid_of(self.group))
        else:
            sock, self._sock_ino = listen_unix(path, 0o600)
        sock.setblocking(False)
        self.sock = sock
        self.fast_door = FastDoor.bind(path)     # for the plan cache fast path

    # --- serving ----------------------------------------------------------------
    async def serve(self, ready=None):
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="build",
            initializer=set_priority(self.priority, self.log)))
        self._build_lock = asyncio.Lock()
        self._stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: self._stop.done() or self._stop.set_result(0))
        self.log(f"serving {self.socket_path} (pid {os.getpid()}, linger {self.linger:g}s"
                 f"{f', idle exit {self.idle_exit:g}s' if self.idle_exit else ''})")
        if ready:
            ready()
        table = self.state.refs.table
        self.hub = Hub(loop, table, self.state.mutex)
        loop.add_reader(self.sock.fileno(), self._accept)
        body, fd = self._hello_reply()
        table.set_hello(_HEADER_PACK(len(body), P.HELLO | P.REPLY) + body, fd)
        table.log_fd = 2 if self.log is stderr_log else -1
        self.fast_door.start(table, self.state.mutex,
                             lambda *a: loop.call_soon_threadsafe(self._adopt_native, *a))
        tasks = {asyncio.ensure_future(self._tick())}
        try:
            await self._stop
        finally:
            loop.remove_reader(self.sock.fileno())
            self.fast_door.close()
            self.hub.close()
            for t in tasks:
                t.cancel()
            self.sock.close()
            unlink_if_ours(self.socket_path, self._sock_ino)
            if self._idle_exit:
                self._release_pool()
            else:
                self.state.save()
            self.log("stopped")

    def _release_pool(self):
        """Nobody is connected and the broker goes away: lingering would keep
        memory for nobody, so the unused images go now, and an empty pool is
        removed with its journal (mappings in processes survive the unlink).
        Images a process still maps (left by a previous broker) keep it."""
        st = self.state
        with st.mutex:                  # the fast door may end its last batch
            st.sweep(linger=0)
        if st.store.images:
            st.save()
            return
        st.close()
        pool_unlink(st.pool_name)
        journal.remove(st.journal_path)
        self.log(f"pool {st.pool_name} empty: removed")

    def _accept(self):
        """Every pending connection, each answered at once if its request
        is already there (a starting program's usually is)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:            # EMFILE and friends: keep serving the others
                self.log(f"accept: {e.strerror}")
                loop.remove_reader(self.sock.fileno())
                loop.call_later(0.1, loop.add_reader, self.sock.fileno(), self._accept)
                return
            self._adopt(conn)

    def _adopt(self, conn):
        """A new client (from either socket), answered at once if its
        request is already there."""
        conn.setblocking(False)
        pid, uid, gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        client = Client(self.state.refs.table.new_client_id(), pid, uid, gid, conn.fileno())
        self.clients[client.id] = client
        Connection(self, conn, client, self.hub).start()

    def _adopt_native(self, fd, unsent, rest):
        """A fast-door connection the native table answered so far asks for
        more (dlopen, a plan to build, a HELLO it would not take)."""
        info = self.state.refs.table.adopt(fd)
        if info is None:
            return
        cid, pid, uid, gid, hello, name, fd_pending = info
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        client = Client.of_native(cid, pid, uid, gid, hello, name, fd)
        self.clients[cid] = client
        Connection(self, sock, client, self.hub).adopted(
            unsent, rest, self.state.pool.readonly_fd() if fd_pending else None)

    def all_clients(self):
        """Every connected client: Python's and the native table's."""
        return list(self.clients.values()) + [Client.of_native(*n)
                                              for n in self.state.refs.table.native_clients()]

    async def _tick(self):
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.linger / 4)))
            for msg in self.state.refs.table.take_gone():      # native clients' ends
                self.log(msg)
            if not self._build_lock.locked():
                with self.state.mutex:                   # the fast door grants meanwhile
                    gone = self.state.sweep()
                for rec in gone:
                    self.log(f"evicted {rec.path} ({rec.placed.size >> 10} KiB at {rec.map_start:#x})")
                if self.state.files_idle(time.monotonic()):
                    self.state.drop_files()
            # bare connections (liveness probes) do not keep the broker alive
            if self.state.refs.table.nnative or any(c.hello for c in list(self.clients.values())):
                self._last_active = time.monotonic()
            elif self.idle_exit and time.monotonic() - self._last_active >= self.idle_exit:
                self.log(f"idle for {self.idle_exit:g}s: exiting")
                self._idle_exit = True
                self._stop.done() or self._stop.set_result(0)

    def _gone(self, client, released=0):
        n = self.state.refs.drop_client(client.id) + released
        del self.clients[client.id]
        if n or client.hello:
            self.log(f"client {client.id} ({client.kind} pid {client.pid} uid {client.uid} gid {client.gid}"
                     f"{' ' + client.name if client.name else ''}) gone, {n} leases released")

    def _dispatch(self, client, op, payload):
        """(reply frame, fd or None), or an awaitable of it for slow requests."""
        try:
            handler = self._handlers.get(op)
            if handler is None:
                raise P.ProtocolError(f"unknown op {op:#x}")
            if not client.hello and op != P.HELLO:
                raise P.ProtocolError("the first request must be HELLO")
            out = handler(self, client, payload)
            if type(out) is bytes:              # the usual answer: no descriptor
                if len(out) > P.MAX_PAYLOAD:
                    return self._reply(op, out)
                return _HEADER_PACK(len(out), op | P.REPLY) + out, None
            if asyncio.iscoroutine(out):
                return self._finish(client, op, out)
            return self._reply(op, out)
        except Exception as e:
            return self._error(op, e)

    async def _finish(self, client, op, coro):
        try:
            return self._reply(op, await coro)
        except Exception as e:
            return self._error(op, e)

    @staticmethod
    def _reply(op, out):
        body, fd = out if isinstance(out, tuple) else (out, None)
        return P.frame(op | P.REPLY, body), fd

    def _error(self, op, e):
        if isinstance(e, LdpoolError):
            msg = str(e)
        elif isinstance(e, KeyError):
            msg = f"unknown {e.args[0]}"
        elif isinstance(e, OSError):
            msg = f"{e.filename}: {e.strerror}" if e.filename else str(e)
        else:                        # a bug must not take the broker down
            self.log(f"internal error on {P.OP_NAMES.get(op, op)}: {type(e).__name__}: {e}")
            msg = f"internal broker error: {type(e).__name__}: {e}"
        return P.frame(P.ERROR, msg.replace("\n", " ").encode()[:4000]), None

    # --- operations ---------------------------------------------------------------
    def _hello(self, client, payload):
        req = P.Request.decode(payload)
        if req.int("proto", 0) != P.PROTO_VERSION:
            raise BrokerError(f"protocol version {req.text('proto')} not supported (broker speaks 1)")
        kind = req.text("kind", "process")
        if kind not in ("process", "guest"):
            raise P.ProtocolError(f"unknown client kind '{kind}'")
        client.kind, client.name, client.hello = kind, req.text("name", "")[:64], True
        self._last_active = time.monotonic()
        # no log line here: starts are the hot path; _gone logs the client
        body, fd = self._hello_reply()
        return body, (fd if kind == "process" else None)

    def _hello_reply(self):
        """The HELLO reply body (the same for every client of this epoch)
        and the pool descriptor for processes."""
        st = self.state
        if self._hello_body is None:
            self._hello_body = P.encode_kv([
                ("proto", 1), ("epoch", st.epoch), ("pool", st.pool_name),
                ("pool_size", st.pool.size), ("window", hex(st.pool.window)),
                ("window_size", hex(st.pool.window_size)), ("broker_pid", os.getpid())])
        return self._hello_body, st.pool.readonly_fd()

    def _acquire_program(self, client, payload):
        with self.state.mutex:
            # a new connection's HELLO + ACQUIRE come in one read, here: the
            # native entry answers the acquire all the same
            plan = self.state.refs.table.acquire(client.fd, client.id, client.uid,
                                                 client.kind == "process", payload)
            if plan is not None:
                return plan
            acq = self.acquirer.cached_program(payload)
            if acq is not None:
                return self._grant(client, acq, payload)
        return self._build_program(client, payload)

    async def _build_program(self, client, payload):
        req = P.Request.decode(payload)
        async with self._build_lock:
            acq = await asyncio.to_thread(self._in_worker, self.acquirer.program, req, payload)
            return self._grant(client, acq, payload)

    def _in_worker(self, fn, *args):
        try:
            return fn(*args)
        finally:
            self.state.flush()

    def _grant(self, client, acq, payload=None):
        if client.id not in self.clients:
            raise BrokerError("client gone")      # died while its plan was built
        # a lease's own context: dlopen will extend its resolution
        ctx = self.acquirer.lease_context(acq.context) if acq.context is not None else None
        lease = self.state.refs.new_lease(client.id, acq.keys, ctx)
        self._note_uid(client, acq.keys)
        if payload is not None:
            if client.kind == "process":
                self.plans.publish(payload, acq)     # the next start needs no round trip
            self._go_native(client, acq, payload)
        return set_lease(acq.plan, lease.id)

    def _go_native(self, client, acq, payload):
        """The next identical request is answered by the native hot path."""
        refs = self.state.refs
        table = refs.table
        if table.known(payload, acq, client.uid) or len(acq.plan) > P.MAX_PAYLOAD:
            return
        table.register(payload, _HEADER_PACK(len(acq.plan), P.ACQUIRE_PROGRAM | P.REPLY) + acq.plan,
                       [refs.ids[k] for k in acq.keys],
                       [(os.fsencode(path), sid) for path, sid in acq.files], client.uid, acq)

    def _stats(self, client, payload):
        with self.state.mutex:          # a consistent view: the fast door waits
            return json.dumps(stats_for(self, client.uid)).encode()

    def _ping(self, client, payload):
        return b""

    _handlers = {P.HELLO: _hello, P.ACQUIRE_PROGRAM: _acquire_program,
                 P.ACQUIRE_LIBRARY: LeaseOps._acquire_library, P.RELEASE: LeaseOps._release,
                 P.STATS: _stats, P.PING: _ping, P.RECLAIM: LeaseOps._reclaim}


def run(args):
    socket_path = os.path.abspath(args.socket or P.default_socket_path())
    pool_size = parse_size(args.pool_size)
    if args.linger < 0:
        raise BrokerError("--linger must be >= 0")
    prepare_dir(socket_path, args.group)
    if args.detach:
        return detach(args, socket_path, pool_size, lambda: Broker(
            socket_path, args.pool, pool_size, args.linger, args.group, args.idle_exit,
            text_in_pool=args.text_in_pool, priority=args.priority))
    lockfd = lock(socket_path)          # held until the process exits
    if lockfd is None:
        raise BrokerError(f"another broker is already serving {socket_path}")
    broker = Broker(socket_path, args.pool, pool_size, args.linger, args.group, args.idle_exit,
                    text_in_pool=args.text_in_pool, priority=args.priority)
    broker.bind()
    asyncio.run(broker.serve())
    return 0
