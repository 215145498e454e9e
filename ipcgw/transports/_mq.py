"""What the SysV and POSIX message-queue transports share.

Both keep a well-known rendezvous queue plus a private queue per client and
direction, exchange pids in a fixed-size hello, and run the same byte-pipe
logic over an OS primitive that moves one bounded message: a chunk of data or
a zero-length control marker (END, WAKE, RESET). Each transport maps these
kinds onto what its OS offers (SysV message types, POSIX priorities) and
supplies ``_get``/``_put``; the loops that turn wake-ups into ``b""``,
``Timeout`` or ``Disconnected`` live here, once.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from abc import abstractmethod
from typing import NamedTuple

from ipcgw.errors import ConnectError, Disconnected, Timeout
from ipcgw.transports.base import (
    Buffer,
    Connection,
    ServerLock,
    deadline_after,
    pid_alive,
)

__all__ = [
    "DATA",
    "END",
    "PEER_CHECK",
    "RESET",
    "UNKNOWN_OWNER",
    "WAKE",
    "Hello",
    "MqConnection",
    "lock_owner",
    "next_client_id",
    "pack_hello",
    "read_welcome",
    "unpack_hello",
]

#: Kinds of queue message. Zero-length control markers need no payload header,
#: so data chunks travel untouched (no copy, no tag byte).
DATA, END, WAKE, RESET = "data", "end", "wake", "reset"

#: How often a blocked call checks that the peer process still exists: dead
#: peers are reported within about this long (queues have no EOF).
PEER_CHECK = 0.5

_MAGIC = b"IPGW"
_VERSION = 1
_HELLO = struct.Struct("<4sHHqqq")
_ids = itertools.count(1)


class Hello(NamedTuple):
    """The handshake record both ways: pid plus two transport-specific fields."""

    status: int
    pid: int
    a: int
    b: int
    text: bytes


def pack_hello(pid: int, a: int = 0, b: int = 0, status: int = 0, text: bytes = b"") -> bytes:
    return _HELLO.pack(_MAGIC, _VERSION, status, pid, a, b) + text


def unpack_hello(data: bytes) -> Hello | None:
    """None for anything that is not our hello (garbage on a public queue)."""
    if len(data) < _HELLO.size:
        return None
    magic, version, status, pid, a, b = _HELLO.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        return None
    return Hello(status, pid, a, b, data[_HELLO.size :])


def read_welcome(payload: bytes, where: str) -> Hello:
    """The server's answer to our hello, or ConnectError with its refusal in its words."""
    welcome = unpack_hello(payload)
    if welcome is None or welcome.status:
        text = welcome.text.decode(errors="replace") if welcome else "bad welcome"
        raise ConnectError(f"{where} refused: {text}")
    return welcome


def next_client_id() -> str:
    """Unique per connection on this host: pid plus a per-process counter."""
    return f"{os.getpid()}.{next(_ids)}"


#: lock_owner's answer when the lock belongs to another user (a root server's
#: lies in /run/ipcgw, which only root may enter): a server may be there.
UNKNOWN_OWNER = 0


def lock_owner(scheme: str, name: str, uid: int) -> int | None:
    """Pid of the live server holding the lock of ``name``, whose queue belongs to
    ``uid``: None when no server holds it (the queue is stale), UNKNOWN_OWNER
    when the lock is another user's and so out of our sight.

    Read from /proc/locks instead of trying the lock, because even a shared
    probe lock could make a server that is starting right now fail its own
    exclusive ``LOCK_NB`` and refuse to start.
    """
    if uid != os.geteuid():
        return UNKNOWN_OWNER
    try:
        st = os.stat(ServerLock(scheme, name).path)
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN_OWNER
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 8019 fe:00:2146422 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
                    return int(fields[4])
    except OSError:
        pass
    return None


class MqConnection(Connection):
    """A byte pipe over a pair of one-direction queues (read ``rq``, write ``wq``).

    Subclasses move one message per OS call; this class chunks, handles the
    markers and decides what a wake-up means. ``recv`` returns b"" after the
    peer's END or after our own ``close()``, raises Disconnected when the peer
    process is gone or reset the stream, Timeout when the deadline passed.
    """

    def __init__(self, peer_pid: int, chunk: int, peer: str) -> None:
        self.peer_pid = peer_pid
        self.peer = peer
        self.chunk = chunk
        self._closed = False
        self._eof = False  # peer sent END (orderly)
        self._peer_dead = False

    @abstractmethod
    def _get(self, deadline: float | None) -> tuple[bytes, str] | None:
        """One message and its kind, or None if woken with nothing to read."""

    @abstractmethod
    def _put(self, chunk: Buffer, deadline: float | None) -> None:
        """Queue one data chunk or raise Timeout / Disconnected."""

    def send(self, data: Buffer) -> None:
        if self._closed:
            raise Disconnected("connection closed")
        view = memoryview(data).cast("B")
        n, step = len(view), self.chunk
        deadline = deadline_after(self.send_timeout)
        if n <= step:  # the common case: one OS call, no slicing
            if n:
                self._put(view, deadline)
            return
        for off in range(0, n, step):
            self._put(view[off : off + step], deadline)

    def recv(self, timeout: float | None = None) -> bytes:
        deadline = deadline_after(timeout)
        while True:
            if self._closed or self._eof:
                return b""
            msg = self._get(deadline)
            if msg is not None:
                payload, kind = msg
                if kind == DATA:
                    if payload:
                        return payload
                    continue
                if kind == END:
                    self._eof = True
                    return b""
                if kind == RESET:
                    raise Disconnected(f"{self.peer} reset the connection")
            if self._closed:
                return b""
            self.check(deadline)

    def check(self, deadline: float | None) -> None:
        """Raise if a wait must end: our deadline passed or the peer died."""
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(f"nothing from {self.peer} in time")
        if not self.peer_alive():
            raise Disconnected(f"{self.peer} died (pid {self.peer_pid} is gone)")

    def peer_alive(self) -> bool:
        if not self._peer_dead and not pid_alive(self.peer_pid):
            self._peer_dead = True
        return not self._peer_dead
