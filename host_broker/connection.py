"""One client connection of the broker: frames reassembled from the byte
stream (loader.protocol.FrameDecoder, never transport message boundaries),
answered in order; the pool descriptor rides on the HELLO reply."""
import array
import asyncio
import collections
import socket

from loader import protocol as P


class Connection(asyncio.Protocol):
    """One client connection: frames reassembled from the byte stream,
    answered in order; a slow (building) request holds back the ones
    pipelined after it."""

    def __init__(self, broker, sock, client):
        self.broker, self.sock, self.client = broker, sock, client
        self.decoder = P.FrameDecoder()
        self.queue = collections.deque()
        self.busy = False
        self.write_paused = False
        self.closing = False

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        if self.closing:
            return
        try:
            self.queue.extend(self.decoder.feed(data))
        except P.ProtocolError as e:
            self.t.write(P.frame(P.ERROR, str(e).encode()))
            self.closing = True
            self.t.close()
            return
        self._run()

    def _run(self):
        while self.queue and not self.busy and not self.closing and not self.write_paused:
            op, payload = self.queue.popleft()
            out = self.broker._dispatch(self.client, op, payload)
            if isinstance(out, tuple):
                self._send(op, *out)
            else:
                self.busy = True
                self.t.pause_reading()
                asyncio.ensure_future(out).add_done_callback(lambda f, op=op: self._done(op, f))

    def _done(self, op, fut):
        self.busy = False
        if self.closing or fut.cancelled():
            return
        self._send(op, *fut.result())
        if not self.write_paused:
            self.t.resume_reading()
        self._run()

    def _send(self, op, reply, fd):
        if fd is not None and not self.t.get_write_buffer_size():
            # the pool descriptor rides on the first byte of the reply
            try:
                n = self.sock.sendmsg([reply], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array("i", [fd]))])
            except OSError:
                n = 0
            reply = reply[n:]
        if reply:
            self.t.write(reply)
        if op not in P.REQUEST_OPS:          # framing error: answered, then closed
            self.closing = True
            self.t.close()

    # a client that does not read its replies is not read from either
    def pause_writing(self):
        self.write_paused = True
        self.t.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        if not self.busy:
            self.t.resume_reading()
            self._run()

    def connection_lost(self, exc):
        self.closing = True
        self.broker._gone(self.client)
