"""One client connection of the broker: frames reassembled from the byte
stream (loader.protocol.FrameDecoder, never transport message boundaries),
answered in order; the pool descriptor rides on the HELLO reply.

The socket is driven with the event loop's reader/writer callbacks rather
than an asyncio transport: a starting program connects and sends HELLO and
ACQUIRE_PROGRAM at once, so the broker reads them right after accept() and
answers both in the same wakeup, with plain send()/sendmsg() calls."""
import array
import asyncio
import collections
import socket

from loader import protocol as P

RECV = 262144
HIGH_WATER = 1 << 20        # bytes queued for a client before we stop reading it
FIRST_WAIT = 0.002          # seconds the event loop waits for a new client's first bytes


class Connection:
    """A slow (building) request holds back the ones pipelined after it; a
    client that does not read its replies is not read from either."""

    def __init__(self, broker, sock, client, loop):
        self.broker, self.sock, self.client, self.loop = broker, sock, client, loop
        self.fileno = sock.fileno()
        self.decoder = P.FrameDecoder()
        self.queue = collections.deque()
        self.out = collections.deque()     # [bytes, fd or None] not yet sent
        self.queued = 0
        self.busy = False
        self.reading = False
        self.writing = False
        self.closing = False               # no more requests are read or answered
        self.lost = False

    def start(self):
        """A starting program sends HELLO and ACQUIRE_PROGRAM right after
        connecting: wait that long for them (blocking, FIRST_WAIT at most)
        and answer at once, rather than going round the event loop."""
        self.sock.settimeout(FIRST_WAIT)
        try:
            data = self.sock.recv(RECV)
        except (socket.timeout, BlockingIOError, InterruptedError):
            data = None
        except OSError:
            return self._lose()
        self.sock.setblocking(False)
        if data is None:
            self._set_reading(True)
        else:
            self._received(data)

    # --- input ----------------------------------------------------------
    def _set_reading(self, on):
        on = on and not self.lost
        if on != self.reading:
            self.reading = on
            if on:
                self.loop.add_reader(self.fileno, self._readable)
            else:
                self.loop.remove_reader(self.fileno)

    def _readable(self):
        if self.lost:
            return
        try:
            data = self.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._lose()
        self._received(data)

    def _received(self, data):
        if not data:
            return self._lose()
        if self.closing:
            return
        try:
            self.queue.extend(self.decoder.feed(data))
        except P.ProtocolError as e:
            self.queue.clear()
            self._send(P.ERROR, P.frame(P.ERROR, str(e).encode()), None)
        self._run()

    def _run(self):
        while self.queue and not self.busy and not self.closing and self.queued < HIGH_WATER:
            op, payload = self.queue.popleft()
            out = self.broker._dispatch(self.client, op, payload)
            if isinstance(out, tuple):
                self._send(op, *out)
            else:
                self.busy = True
                asyncio.ensure_future(out).add_done_callback(lambda f, op=op: self._done(op, f))
        # pipelined replies leave in one send: the client wakes up once
        self._flush()
        self._set_reading(not (self.busy or self.closing or self.queued >= HIGH_WATER))

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
        out = self.out
        while out and not self.lost:
            data, fd = out[0]
            if len(out) > 1 and out[1][1] is None:
                parts = [data]
                while len(out) > 1 and out[1][1] is None:
                    parts.append(out[1][0])
                    del out[1]
                data = out[0][0] = b"".join(parts)
            try:
                if fd is not None:
                    n = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", [fd]))])
                else:
                    n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return self._lose()
            self.queued -= n
            if n < len(data):
                out[0][0], out[0][1] = data[n:], None
                break
            out.popleft()
        if self.lost:
            return
        self._set_writing(bool(out))
        if self.closing and not out:
            self._lose()

    def _set_writing(self, on):
        on = on and not self.lost
        if on != self.writing:
            self.writing = on
            if on:
                self.loop.add_writer(self.fileno, self._writable)
            else:
                self.loop.remove_writer(self.fileno)

    def _writable(self):
        self._flush()
        if not self.lost and not self.out and not self.busy:
            self._run()

    # --- end --------------------------------------------------------------
    def _lose(self):
        """The connection ended (EOF, error, or our close): its leases go."""
        if self.lost:
            return
        self._set_reading(False)
        self._set_writing(False)
        self.lost = self.closing = True
        self.out.clear()
        self.sock.close()
        self.broker._gone(self.client)
