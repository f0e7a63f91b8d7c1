"""The broker's small state journal: enough to re-attach to the pool after a
crash (epoch, slide, the allocator's live extents, which image lives where
and the SHA-256 of its pool bytes). Written whole and atomically (temporary
file + rename) whenever the set of images changes, never on the acquire path.

Format: one line `LDPJRNL1 <sha256 of the rest>` then a JSON object. Anything
else (truncated, edited, unparsable) is a JournalError: the broker reports it
in one line and starts a fresh epoch."""
import hashlib
import json
import os

from loader.errors import BrokerError

MAGIC = b"LDPJRNL1"


class JournalError(BrokerError):
    pass


def save(path, state):
    body = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
    data = MAGIC + b" " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load(path):
    """The saved state, None when there is no journal, JournalError when it
    cannot be trusted."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JournalError(f"journal {path}: {e.strerror}") from None
    head, nl, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not nl or len(parts) != 2 or parts[0] != MAGIC:
        raise JournalError(f"journal {path}: not an ldpool journal (bad header)")
    if hashlib.sha256(body).hexdigest().encode() != parts[1]:
        raise JournalError(f"journal {path}: checksum mismatch (corrupted or truncated)")
    try:
        state = json.loads(body)
    except ValueError as e:
        raise JournalError(f"journal {path}: unreadable JSON ({e})") from None
    if not isinstance(state, dict) or state.get("version") != 1:
        raise JournalError(f"journal {path}: unknown journal version")
    return state


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
