"""The broker's second listening socket, `<socket>.fast`, for clients that
do not wait for the answer: ldpool-exec started from a plan cache file
(host_broker/plancache.py) announces itself there.

A Unix socket wakes its reader on the writer's processor, as if the writer
were about to sleep; a starting program that goes on running is then
preempted by the broker for as long as the broker takes to answer.  Here a
thread of its own, SCHED_BATCH (it never preempts on wake-up), serves the
door with an epoll set of its own: the native table
(_native/leasetable_door.pxi) accepts, answers each connection's HELLO and
cached ACQUIRE_PROGRAM, and sees it end, with no Python object and no
asyncio wake-up; connection.py adopts a connection only if it asks for more
(docs/protocol.md).  A Python connection per start cost the broker ~250 us of
CPU, which on two processors is the starting program's time."""
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

    def start(self, table, mutex, adopt):
        """Serve the door with the native table (LeaseTable.door) in a
        thread; adopt(fd, unsent, rest) must be safe to call from it."""
        self.sock.setblocking(False)
        threading.Thread(target=self._run, args=(table, mutex, adopt), name="fastdoor",
                         daemon=True).start()

    def _run(self, table, mutex, adopt):
        try:   # this thread only (Linux): batch, at the starting nice value
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, 0, self._nice)
        except (AttributeError, OSError):
            pass
        table.door(self.sock.fileno(), mutex, adopt)      # until close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        unlink_if_ours(self.path, self._ino)
