"""Client connections of the broker: frames reassembled from the byte stream
(loader.protocol.FrameDecoder, never transport message boundaries),
answered in order; the pool descriptor rides on the HELLO reply.

Every client socket sits in one epoll set of our own (Hub), registered once
and level-triggered; the asyncio loop watches only that set's descriptor.
A wakeup then costs one asyncio callback however many clients are ready.

The set is read by the native LeaseTable (_native/leasetable.pyx): a
connection that is idle here (nothing queued, pending, unsent or building,
HELLO done) is "hot": its cached program acquires, releases and pings are
answered in C.  At the first request that is anything else (or a partial
frame, an unsent reply, an EOF) the table hands the connection back with the
bytes it did not answer (and any reply bytes it could not send), which are
queued here in order; once the connection is idle again it goes back to the
table.  asyncio still runs the timers, the worker-thread builds and their
completions."""
import array
import asyncio
import collections
import select
import socket

from loader import protocol as P

RECV = 262144
HIGH_WATER = 1 << 20        # bytes queued for a client before we stop reading it
ROUNDS = 4                  # client polls per event-loop wakeup: a request that
                            # arrived meanwhile is answered without going round
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR
_SCM = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
_HEADER = P.HEADER.unpack_from
_OPS = P.REQUEST_OPS


class Hub:
    """The client sockets' epoll set and the receive buffer they share (a
    request is decoded before the next recv, so one buffer serves all)."""

    def __init__(self, loop, table, mutex=None):
        self.loop, self.table, self.mutex = loop, table, mutex
        self.ep = select.epoll()
        self.conns = {}                 # fd -> Connection, while registered
        self.buf = bytearray(RECV)
        self.view = memoryview(self.buf)
        loop.add_reader(self.ep.fileno(), self._poll)

    def _poll(self):
        conns, serve, epfd, mutex = self.conns, self.table.serve, self.ep.fileno(), self.mutex
        for _ in range(ROUNDS):
            n, up = serve(epfd, mutex)
            if not n:
                return
            for fd, ev, unsent, rest in up:
                c = conns.get(fd)
                if c is None:                 # closed earlier in this batch
                    continue
                c.hot = False
                if unsent is not None or rest is not None:
                    c._handed(unsent, rest)
                    continue
                if c.mask & _IN and ev & (_IN | _GONE):
                    c._readable()
                if c.mask & _OUT and ev & (_OUT | _GONE) and not c.lost:
                    c._writable()
            if n == 1:      # a lone request: little chance another came meanwhile
                return

    def close(self):
        """Stop serving (connections stay open until the process exits:
        a stopping broker hands its clients' references to no one)."""
        self.loop.remove_reader(self.ep.fileno())


class Connection:
    """A slow (building) request holds back the ones pipelined after it; a
    client that does not read its replies is not read from either."""

    __slots__ = ("broker", "sock", "client", "hub", "fileno", "decoder", "queue", "out",
                 "queued", "busy", "closing", "lost", "mask", "hot")

    def __init__(self, broker, sock, client, hub):
        self.broker, self.sock, self.client, self.hub = broker, sock, client, hub
        self.fileno = sock.fileno()
        self.decoder = P.FrameDecoder()
        self.queue = collections.deque()
        self.out = collections.deque()     # [bytes, fd or None] not yet sent
        self.queued = 0
        self.busy = False
        self.closing = False               # no more requests are read or answered
        self.lost = False
        self.mask = 0                      # epoll events registered for
        self.hot = False                   # read by the native table (see above)

    def start(self):
        """A starting program sends HELLO and ACQUIRE_PROGRAM right after
        connecting: when they are already there, answer them in this
        wakeup; a client that has not written yet is simply watched (it
        never holds up the others)."""
        self._watch(_IN)
        self._readable()

    # --- events -------------------------------------------------------------
    def _watch(self, mask):
        """Register for exactly these events (none: out of the set, as a
        level-triggered hang-up would otherwise be reported forever)."""
        if self.lost or mask == self.mask:
            return
        ep, fd = self.hub.ep, self.fileno
        if not mask:
            ep.unregister(fd)
            del self.hub.conns[fd]
        elif not self.mask:
            ep.register(fd, mask)
            self.hub.conns[fd] = self
        else:
            ep.modify(fd, mask)
        self.mask = mask

    def _update(self):
        reading = not (self.busy or self.closing or self.queued >= HIGH_WATER)
        self._watch((_IN if reading else 0) | (_OUT if self.out else 0))
        if (reading and not self.out and not self.queue and not self.hot and not self.lost
                and self.client.hello and not self.decoder.pending):
            self.hub.table.activate(self.fileno, self.client.id, self.client.uid,
                                    self.client.kind == "process")
            self.hot = True

    def adopted(self, unsent, rest, fd=None):
        """A fast-door connection the native table answered so far becomes
        ours (it is in no epoll set now); fd: the pool descriptor its HELLO
        reply still has to carry."""
        self._handed(unsent, rest, fd)       # which registers it in the hub's set

    def _handed(self, unsent, rest, fd=None):
        """The native table stopped at something it does not answer: the
        replies it could not send go first, then what it did not read."""
        if unsent:
            self._send(P.PING, unsent, fd)
        if rest:
            try:
                frames = self.decoder.feed(rest)
            except P.ProtocolError as e:
                self.queue.clear()
                self._send(P.ERROR, P.frame(P.ERROR, str(e).encode()), None)
                return self._run()
            self.queue.extend(frames)
        self._run()

    # --- input ----------------------------------------------------------
    def _readable(self):
        hub = self.hub
        try:
            n = self.sock.recv_into(hub.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._lose()
        if not n:
            return self._lose()
        if self.closing:
            return
        if n >= 8 and not (self.queue or self.busy or self.out or self.decoder.pending):
            # the usual request: one whole frame, nothing before it, answered
            # by one send with no queueing
            length, op = _HEADER(hub.buf)
            if n == 8 + length and op in _OPS:
                out = self.broker._dispatch(self.client, op, bytes(hub.view[8:n]))
                if type(out) is tuple and out[1] is None:
                    reply = out[0]
                    try:
                        sent = self.sock.send(reply)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError:
                        return self._lose()
                    if sent < len(reply):
                        self._send(op, reply[sent:], None)
                    return self._update()
                self._take(op, out)        # a descriptor to pass, or a build
                return self._run()
        try:
            frames = self.decoder.feed(hub.view[:n])
        except P.ProtocolError as e:
            self.queue.clear()
            self._send(P.ERROR, P.frame(P.ERROR, str(e).encode()), None)
            return self._run()
        if frames:
            if len(frames) == 1:
                self.queue.append(frames[0])
            else:
                self.queue.extend(frames)
            self._run()

    def _take(self, op, out):
        """A dispatched request's answer: a reply to send, or a build to
        wait for (which holds back what was pipelined after it)."""
        if type(out) is tuple:
            self._send(op, out[0], out[1])
        else:
            self.busy = True
            asyncio.ensure_future(out).add_done_callback(lambda f, op=op: self._done(op, f))

    def _run(self):
        queue, client, dispatch = self.queue, self.client, self.broker._dispatch
        while queue and not self.busy and not self.closing and self.queued < HIGH_WATER:
            op, payload = queue.popleft()
            self._take(op, dispatch(client, op, payload))
        # pipelined replies leave in one send: the client wakes up once
        if self.out:
            self._flush()
        if not self.lost:
            self._update()

    def _done(self, op, fut):
        self.busy = False
        if self.lost or self.closing or fut.cancelled():
            return
        self._send(op, *fut.result())
        self._run()

    # --- output ---------------------------------------------------------
    def _send(self, op, reply, fd):
        self.out.append([reply, fd])
        self.queued += len(reply)
        if op not in P.REQUEST_OPS:          # framing error: answered, then closed
            self.closing = True

    def _flush(self):
        """Send what the socket takes; the rest waits for writability.  A
        descriptor rides on the first byte of its reply, so replies are
        joined up to the next one that carries a descriptor."""
        out, sock = self.out, self.sock
        while out:
            data, fd = out[0]
            if len(out) > 1 and out[1][1] is None:
                parts = [data]
                while len(out) > 1 and out[1][1] is None:
                    parts.append(out[1][0])
                    del out[1]
                data = out[0][0] = b"".join(parts)
            try:
                if fd is not None:
                    n = sock.sendmsg([data], [(*_SCM, array.array("i", [fd]))])
                else:
                    n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return self._lose()
            self.queued -= n
            if n < len(data):
                out[0][0], out[0][1] = data[n:], None
                break
            out.popleft()
        if self.closing and not out:
            self._lose()

    def _writable(self):
        self._flush()
        if self.lost:
            return
        if not self.out and not self.busy:
            self._run()
        else:
            self._update()

    # --- end --------------------------------------------------------------
    def _lose(self):
        """The connection ended (EOF, error, or our close): its leases go."""
        if self.lost:
            return
        self._watch(0)
        self.lost = self.closing = True
        self.out.clear()
        self.queue.clear()
        released = self.hub.table.close(self.fileno)     # its native leases
        self.sock.close()
        self.broker._gone(self.client, released)
