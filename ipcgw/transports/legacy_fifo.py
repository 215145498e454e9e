"""The legacy one-way sspi FIFO: C programs open one named pipe and write 8-byte records.

Features
========
- ``fifo:///tmp/mptcp-ns3-fifo?codec=sspi`` names the FIFO itself; if the path
  is an existing directory, the FIFO is ``DIR/mptcp-ns3-fifo``.
- One read-only connection at a time, outliving every writer; after it ends
  (an sspi END) the next one serves the same FIFO. Writers are not answered.
- Records stay aligned per writer: a writer's session is its open → close.
  ``recv`` returns whole records only (``fixed:N`` framing), and when the last
  writer closes, a partial record it left (it died mid-write) is dropped with a
  warning, so the next writer starts aligned. Writers that overlap must write
  whole records per ``write`` (atomic below PIPE_BUF), as the C peers do.

Trust
=====
The FIFO usually lives in /tmp, where any user may have made the name first.
The server uses a FIFO only if it owns it: it creates a missing one, opens the
name with ``O_NOFOLLOW`` and checks with ``fstat`` that it is a FIFO owned by
its uid, and only then ``fchmod``s that fd. A symlink, another object or
another user's FIFO is refused with the ``rm`` that fixes it (a stale FIFO of
its own is reused, so writers already blocked in ``open`` are served). The
name is removed at close only while it is still that FIFO. Writers are known
by the FIFO's permissions: with the default mode 0600 only the owner (and
root) can open it, so ``peer_uid`` is the owner; a group-writable mode leaves
only ``peer_gid``, a world-writable one nothing.

How a writer's close is seen: the listener holds a read end (an anchor, so
writers can always open) but no write end, so when the last writer closes the
connection's read returns EOF. The connection then opens a fresh read end of
the same pipe (through ``/proc/self/fd``, never the name), because an old one
keeps reporting POLLHUP; if a writer arrived in between, the old one still
sees that writer's close and is kept instead.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import stat

from ipcgw.errors import ConnectError, Disconnected, Timeout, TransportError
from ipcgw.transports.base import Buffer, Connection, Listener, ListenerClosed, ServerLock, deadline_after
from ipcgw.transports.fifo import (
    _IN,
    _RD,
    _WR,
    CHUNK,
    LEGACY_NAME,
    FifoConnection,
    NotOurs,
    _Closable,
    _close,
    _grow,
    _ident,
    _ms,
    _unlink_if,
    open_fifo,
)
from ipcgw.url import Endpoint

__all__ = ["LegacyFifoListener", "LegacyReader", "connect_legacy"]

log = logging.getLogger(__name__)

RECHECK_MS = 200  # how soon a legacy FIFO is served again after its session ended
ONE_WAY = "sspi FIFO is one-way"


def _record_size(framing: str) -> int:
    kind, _, size = framing.partition(":")
    return int(size) if kind == "fixed" and size.isdigit() and int(size) > 0 else 1


class LegacyReader(_Closable, Connection):
    """The server's read end: whole records only, realigned at every writer's close."""

    def __init__(self, rfd: int, path: str, record: int, ident: tuple[int, int]) -> None:
        super().__init__()
        self._rfd, self._path, self._record, self._ident = rfd, path, record, ident
        self.peer = f"sspi writers on {path}"
        self._part = bytearray()
        self._poll = select.poll()
        self._poll.register(self._wake, _IN)
        self._poll.register(rfd, _IN)

    def recv(self, timeout: float | None = None) -> bytes:
        self._enter()
        try:
            deadline = deadline_after(timeout)
            while not self.closed:
                try:
                    data = os.read(self._rfd, CHUNK)
                except BlockingIOError:
                    data = None
                if data:
                    self._part += data
                    whole = len(self._part) - len(self._part) % self._record
                    if whole:
                        out = bytes(self._part[:whole])
                        del self._part[:whole]
                        return out
                    continue
                if data == b"" and self._writers_gone():
                    continue  # the old fd saw a new writer's bytes: read on
                if not self._poll.poll(_ms(deadline)):
                    raise Timeout(f"nothing from {self.peer} within {timeout} s")
            return b""
        except OSError as exc:
            raise Disconnected(f"fifo read from {self.peer}: {exc}") from exc
        finally:
            self._leave()

    def _writers_gone(self) -> bool:
        """EOF: no writer is left. Drop a partial record, get a read end that will
        report the next writer's close; True when data came meanwhile."""
        if self._part:
            log.warning("sspi writer on %s closed mid-record: dropped %d byte(s) of a %d-byte record",
                        self._path, len(self._part), self._record)
            self._part.clear()
        fresh = os.open(f"/proc/self/fd/{self._rfd}", _RD)
        try:
            if _ident(os.fstat(fresh)) != self._ident:
                raise Disconnected(f"{self._path}: reopening the read end gave another file")
            try:
                data = os.read(self._rfd, CHUNK)
            except BlockingIOError:  # a writer opened in between: the old end sees its close
                return False
        except BaseException:
            os.close(fresh)
            raise
        if data:
            os.close(fresh)
            self._part += data
            return True
        self._poll.unregister(self._rfd)
        os.close(self._rfd)
        self._rfd = fresh
        self._poll.register(fresh, _IN)
        return False

    def send(self, data: Buffer) -> None:
        raise TransportError(ONE_WAY)

    def _release(self) -> None:
        _close(self._rfd)
        super()._release()


class LegacyFifoListener(_Closable, Listener):
    def __init__(self, endpoint: Endpoint) -> None:
        path = endpoint.address
        if os.path.isdir(path):
            path = os.path.join(path, LEGACY_NAME)
            endpoint = endpoint.with_address(path)  # say which FIFO writers must open
        self.endpoint, self.path = endpoint, path
        self._record = _record_size(endpoint.framing)
        self._anchor = -1
        self._ident = (-1, -1)
        self._served: LegacyReader | None = None
        self._lock_file = ServerLock("fifo", path)
        self._lock_file.acquire()  # refuses first: nothing to undo yet
        super().__init__()
        try:
            self._setup()
        except BaseException as exc:
            self.close()
            if isinstance(exc, NotOurs):
                raise NotOurs(f"{exc}: remove it (rm {path}) or pick another path") from None
            if isinstance(exc, OSError):
                raise TransportError(f"cannot listen on {self.path}: {exc}") from exc
            raise

    def _setup(self) -> None:
        me = os.geteuid()
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            os.mkfifo(self.path, self.endpoint.mode)
        else:
            if stat.S_ISLNK(st.st_mode):
                raise NotOurs(f"{self.path} is a symbolic link; not following it")
            if not stat.S_ISFIFO(st.st_mode):
                raise ConnectError(f"{self.path} exists and is not a FIFO; not touching it")
            if st.st_uid != me:
                raise NotOurs(f"{self.path} is a FIFO of uid {st.st_uid}, not of this server (uid {me}): "
                              "its owner could chmod it and write to it")
        # An anchor read end: writers' open() succeeds whenever we listen.
        self._anchor, st = open_fifo(self.path, _RD, {me})
        os.fchmod(self._anchor, self.endpoint.mode)  # the fd, never the name
        self._ident = _ident(st)
        _grow(self._anchor, CHUNK)
        self._poll = select.poll()
        self._poll.register(self._wake, _IN)  # the data is the connection's: polling it would spin

    def accept(self) -> Connection:
        self._enter()
        try:
            while not self.closed:
                # One session at a time; after it ends (an sspi END, say) the
                # next writer of the same FIFO gets a new one.
                if self._served is None or self._served.closed:
                    self._served = self._connection()
                    return self._served
                self._poll.poll(RECHECK_MS)
            raise ListenerClosed(f"fifo listener on {self.path} closed")
        finally:
            self._leave()

    def _connection(self) -> LegacyReader:
        # A dup shares the anchor's view of the pipe, opened before any writer:
        # the first writer's close is seen, even one that opened before us.
        conn = LegacyReader(os.dup(self._anchor), self.path, self._record, self._ident)
        st = os.fstat(self._anchor)
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o002:
            conn.peer_gid = st.st_gid
            if not mode & 0o020:
                conn.peer_uid = st.st_uid
        return conn

    def _on_close(self) -> None:
        super()._on_close()
        _unlink_if(self.path, self._ident)
        self._lock_file.release()

    def _release(self) -> None:
        _close(self._anchor)
        super()._release()


def connect_legacy(endpoint: Endpoint) -> Connection:
    """A writer like the C programs: recv only waits for the server to go away."""
    path = endpoint.address
    if os.path.isdir(path):
        path = os.path.join(path, LEGACY_NAME)
    try:
        wfd, _ = open_fifo(path, _WR, None)
    except NotOurs as exc:
        raise ConnectError(f"{exc} (is this an sspi server's FIFO?)") from None
    except FileNotFoundError:
        raise ConnectError(f"no sspi FIFO at {path} (is the server running?)") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ConnectError(f"nobody reads the sspi FIFO {path} (server dead?)") from None
        raise ConnectError(f"cannot open sspi FIFO {path}: {exc}") from exc
    return FifoConnection(-1, wfd, f"sspi server at {path}")
