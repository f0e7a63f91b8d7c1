"""The broker's second listening socket, `<socket>.fast`, for clients that
do not wait for the answer: ldpool-exec started from a plan cache file
(host_broker/plancache.py) announces itself there.

A Unix socket wakes its reader on the writer's processor, as if the writer
were about to sleep; a starting program that goes on running is then
preempted by the broker for as long as the broker takes to answer (the
launcher's broker phase: 300-800 us instead of ~100). Here a thread of its
own, SCHED_BATCH (it never preempts on wake-up), accepts the connection and
hands it to the event loop, which serves it like any other; the event loop
keeps its priority for the clients that do wait (docs/protocol.md)."""
import os
import socket
import threading

from host_broker.listener import listen_unix, unlink_if_ours


class FastDoor:
    def __init__(self, sock, path, ino):
        self.sock, self.path, self._ino = sock, path, ino
        self._nice = os.getpriority(os.PRIO_PROCESS, 0)   # before --priority changes the loop's

    @classmethod
    def bind(cls, socket_path):
        """`<socket>.fast`, mode 0600 (plan cache files are the broker
        user's alone, so only its own clients take the fast path)."""
        path = socket_path + ".fast"
        sock, ino = listen_unix(path, 0o600)
        return cls(sock, path, ino)

    def start(self, loop, adopt):
        """adopt(conn) runs on the event loop for every connection."""
        threading.Thread(target=self._run, args=(loop, adopt), name="fastdoor", daemon=True).start()

    def _run(self, loop, adopt):
        try:   # this thread only (Linux): batch, at the starting nice value
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, 0, self._nice)
        except (AttributeError, OSError):
            pass
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return                      # closed: the broker stops
            try:
                loop.call_soon_threadsafe(adopt, conn)
            except RuntimeError:            # the loop is gone
                conn.close()
                return

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        unlink_if_ours(self.path, self._ino)
