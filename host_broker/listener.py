"""The broker's listening Unix sockets (the main one and the fast door):
created with their mode from the start (umask around bind, so no client
connects while the socket is wider open), and removed at exit only while
the path is still ours (a newer broker may have replaced it)."""
import os
import socket


def listen_unix(path, mode, gid=None):
    """A listening stream socket at path with `mode` (and group `gid`, set
    before anyone can connect), a stale socket file replaced; returns
    (socket, inode of the path)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, mode)
    sock.listen(256)
    return sock, os.stat(path).st_ino


def unlink_if_ours(path, ino):
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass
