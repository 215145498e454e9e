"""Named pipes (FIFOs) in a directory the server owns.

Features
========
- Crosses network namespaces (FIFOs live in the file system), not pid or
  mount namespaces that hide the directory.
- A byte stream: no message boundaries, no size limit (frames of any size are
  written in pieces as the reader drains the pipe; pipes are grown to
  ``pipe_size``, 1 MiB by default, best effort).
- Many clients, each on its own FIFO pair; a client that stops reading costs
  only its own ``send`` (``Connection.send_timeout``), a dead one reads as EOF.
- Every fd is non-blocking; waits are ``poll`` with a self-wake eventfd, so
  ``close()`` from another thread interrupts ``accept``/``recv``/``send``.
- Legacy ``sspi`` codec: one plain FIFO a C program opens and writes to.
- One reader per connection at a time (recv shares a buffer); sends are
  serialised by a lock. ``Listener.close()`` removes every FIFO but leaves
  accepted connections open (their fds keep working) for the gateway to
  drain and close.

URL
===
``fifo:///DIR[?mode=0600&pipe_size=1048576]``

The server creates ``DIR`` (mode 0700) if missing and in it:

- ``ipcgw.req`` — the well-known request FIFO;
- per client, created *by the client* before it says hello:
  ``c<pid>-<16 hex>.c2s`` (client → server) and ``c<pid>-<16 hex>.s2c``.

Handshake: the client makes both FIFOs, opens ``.s2c`` for reading and
``.c2s`` read-write (a placeholder writer, so the server never sees a
premature EOF), then writes ``b"IPCGW-FIFO 1 <pid> <hex>\\n"`` (atomic, <
PIPE_BUF) to ``ipcgw.req``. The server opens ``.c2s`` for reading and
``.s2c`` for writing and writes one ACK byte; the client then opens ``.c2s``
write-only and drops the placeholder. Names come from the hello's fields, never
from paths in it. Both sides unlink the pair when the session ends; the server
also sweeps every ``c*-*.c2s|s2c`` at start (after a crash) and at close.

Legacy sspi: ``fifo:///tmp/mptcp-ns3-fifo?codec=sspi`` names the FIFO itself;
if the path is an existing directory, the FIFO is ``DIR/mptcp-ns3-fifo``. The
listener creates it (reusing a stale one, so writers already blocked in
``open`` are served) and hands out one read-only connection that outlives
every writer: it holds a write end itself, so a writer closing is not EOF.
A writer killed mid-record leaves the stream misaligned (the format has no
way to resync).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import select
import stat
import threading
from collections.abc import Sequence
from typing import ClassVar

from ipcgw.errors import ConnectError, Disconnected, Timeout, TransportError
from ipcgw.transports.base import (
    Buffer,
    CloseOnce,
    Connection,
    Listener,
    ListenerClosed,
    ServerLock,
    Transport,
    deadline_after,
    remaining,
)
from ipcgw.url import Endpoint

__all__ = ["FifoConnection", "FifoListener", "FifoTransport"]

REQUEST = "ipcgw.req"
LEGACY_NAME = "mptcp-ns3-fifo"
CREATED_MARK = ".ipcgw-created"  # DIR was made by an ipcgw server: the next one may rmdir it
HELLO = re.compile(rb"IPCGW-FIFO 1 (\d{1,10}) ([0-9a-f]{16})\n")
SESSION = re.compile(r"c\d+-[0-9a-f]{16}\.(c2s|s2c)")
ACK = b"\x06"
CHUNK = 1 << 20
_RD = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_WR = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
_IN, _OUT = select.POLLIN, select.POLLOUT
_LEGACY_RECHECK_MS = 200  # how soon a legacy FIFO is served again after its session ended
_GONE = select.POLLERR | select.POLLHUP | select.POLLNVAL


def _ms(deadline: float | None) -> int | None:
    left = remaining(deadline)
    return None if left is None else int(left * 1000 + 0.999)


def _mkfifo(path: str, mode: int) -> None:
    os.mkfifo(path, mode)
    os.chmod(path, mode)  # the umask must not narrow (or widen) what the URL asked for


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(path)


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _grow(fd: int, size: int) -> None:
    """Bigger pipes mean fewer wakeups for big frames; a refusal only costs speed."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


class _Closable(CloseOnce):
    """CloseOnce with an eventfd in every poll set, so close() wakes poll()."""

    def __init__(self) -> None:
        super().__init__()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def _on_close(self) -> None:
        os.eventfd_write(self._wake, 1)

    def _release(self) -> None:
        _close(self._wake)


class FifoConnection(_Closable, Connection):
    """One FIFO pair (either may be absent: the legacy FIFOs are one-way)."""

    def __init__(self, rfd: int, wfd: int, peer: str, paths: Sequence[str] = (),
                 one_way: str = "", keep: int = -1) -> None:
        super().__init__()
        self._rfd, self._wfd, self._paths, self._one_way = rfd, wfd, tuple(paths), one_way
        self._keep = keep  # an fd held only to be closed with us (legacy dummy writer)
        self.peer = peer
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._send_lock = threading.Lock()
        # Separate poll objects: recv and send may wait in two threads at once.
        self._rpoll = select.poll()
        self._rpoll.register(self._wake, _IN)
        if rfd >= 0:
            self._rpoll.register(rfd, _IN)
        if wfd >= 0:  # POLLERR on our write end = the peer's reader is gone = it died
            self._rpoll.register(wfd, 0)
        self._wpoll = select.poll()
        self._wpoll.register(self._wake, _IN)
        if wfd >= 0:
            self._wpoll.register(wfd, _OUT)

    def recv(self, timeout: float | None = None) -> bytes:
        self._enter()
        try:
            if self.closed:
                return b""
            if self._rfd >= 0:
                try:  # hot path: data is often there already, no poll needed
                    n = os.readv(self._rfd, (self._buf,))
                    return self._view[:n].tobytes()
                except BlockingIOError:
                    pass
            deadline = deadline_after(timeout)
            while True:
                events = self._rpoll.poll(_ms(deadline))
                if self.closed:
                    return b""
                if not events:
                    raise Timeout(f"nothing from {self.peer} within {timeout} s")
                if self._rfd >= 0:
                    try:
                        n = os.readv(self._rfd, (self._buf,))
                        return self._view[:n].tobytes()
                    except BlockingIOError:
                        pass
                if any(fd == self._wfd and ev & _GONE for fd, ev in events):
                    return b""  # peer died before (or without) opening its write end
        except Timeout:
            raise
        except OSError as exc:  # (Timeout is one too: it is a TimeoutError)
            raise Disconnected(f"fifo read from {self.peer}: {exc}") from exc
        finally:
            self._leave()

    def send(self, data: Buffer) -> None:
        if self._one_way:
            raise TransportError(self._one_way)
        self._enter()
        try:
            with self._send_lock:
                if self.closed:
                    raise Disconnected(f"connection to {self.peer} closed")
                try:  # hot path: one write, no views, no poll
                    n = os.write(self._wfd, data)
                except BlockingIOError:
                    n = 0
                if type(data) is bytes and n == len(data):
                    return
                view = memoryview(data).cast("B")
                if n < view.nbytes:
                    self._write_all([view[n:]])
        except Timeout:
            raise
        except OSError as exc:  # EPIPE mostly: the reader is gone
            raise Disconnected(f"fifo write to {self.peer}: {exc}") from exc
        finally:
            self._leave()

    def sendv(self, parts: Sequence[Buffer]) -> None:
        if self._one_way:
            raise TransportError(self._one_way)
        views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
        self._enter()
        try:
            with self._send_lock:
                self._write_all(views)
        except Timeout:
            raise
        except OSError as exc:
            raise Disconnected(f"fifo write to {self.peer}: {exc}") from exc
        finally:
            self._leave()

    def _write_all(self, views: list[memoryview]) -> None:
        while views:
            if self.closed:
                raise Disconnected(f"connection to {self.peer} closed")
            try:
                n = os.writev(self._wfd, views[:512])  # stay under IOV_MAX
            except BlockingIOError:
                self._wait_writable()
                continue
            while views and n >= views[0].nbytes:
                n -= views.pop(0).nbytes
            if n:
                views[0] = views[0][n:]

    def _wait_writable(self) -> None:
        """The deadline restarts with every bit of progress: it bounds a stalled
        reader, not the time a 16 MiB frame takes to a slow but live one."""
        timeout = self.send_timeout
        if not self._wpoll.poll(None if timeout is None else int(timeout * 1000 + 0.999)):
            raise Timeout(f"{self.peer} did not read for {timeout} s")

    def _on_close(self) -> None:
        super()._on_close()
        for path in self._paths:
            _unlink(path)

    def _release(self) -> None:
        _close(self._rfd)
        _close(self._wfd)
        _close(self._keep)
        super()._release()


class FifoListener(_Closable, Listener):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._legacy = endpoint.codec == "sspi"
        self._pipe_size = int(endpoint.params.get("pipe_size", CHUNK))
        self._rfd = self._wfd = -1
        self._made_dir = False
        self._served: FifoConnection | None = None  # the legacy session
        self._pending = bytearray()
        path = endpoint.address
        if self._legacy and os.path.isdir(path):
            path = os.path.join(path, LEGACY_NAME)
            self.endpoint = endpoint.with_address(path)  # say which FIFO writers must open
        self.dir = os.path.dirname(path) if self._legacy else path
        self.path = path if self._legacy else os.path.join(path, REQUEST)
        self._lock_file = ServerLock("fifo", path)
        self._lock_file.acquire()  # refuses first: nothing to undo yet
        super().__init__()
        try:
            self._setup()
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise TransportError(f"cannot listen on {self.path}: {exc}") from exc
            raise

    def _setup(self) -> None:
        if not self._legacy:
            try:
                os.mkdir(self.dir, 0o700)
                os.chmod(self.dir, 0o700)
                open(os.path.join(self.dir, CREATED_MARK), "w").close()
            except FileExistsError:
                if not os.path.isdir(self.dir):
                    raise ConnectError(f"fifo URL needs a directory: {self.dir} is not") from None
            self._made_dir = os.path.exists(os.path.join(self.dir, CREATED_MARK))
            self._sweep()  # we hold the lock: whatever is there is a dead server's
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            _mkfifo(self.path, self.endpoint.mode)
        else:
            if not stat.S_ISFIFO(st.st_mode):
                raise ConnectError(f"{self.path} exists and is not a FIFO; not touching it")
            os.chmod(self.path, self.endpoint.mode)
        self._rfd = os.open(self.path, _RD)
        self._wfd = os.open(self.path, _WR)  # ours: no EOF when writers come and go
        _grow(self._rfd, self._pipe_size)
        self._poll = select.poll()
        self._poll.register(self._wake, _IN)
        if not self._legacy:  # legacy data is for the connection: polling it would spin
            self._poll.register(self._rfd, _IN)

    def _sweep(self) -> None:
        for name in os.listdir(self.dir):
            if name == REQUEST or SESSION.fullmatch(name):
                _unlink(os.path.join(self.dir, name))

    def accept(self) -> Connection:
        self._enter()
        try:
            while not self.closed:
                if self._legacy:
                    # One session at a time; after it ends (an sspi END, say) the
                    # next writer of the same FIFO gets a new one.
                    if self._served is None or self._served.closed:
                        self._served = self._legacy_connection()
                        return self._served
                elif conn := self._next_hello():
                    return conn
                self._poll.poll(_LEGACY_RECHECK_MS if self._legacy else None)
                if not self._legacy and not self.closed:
                    with contextlib.suppress(BlockingIOError):
                        self._pending += os.read(self._rfd, 4096)
            raise ListenerClosed(f"fifo listener on {self.path} closed")
        finally:
            self._leave()

    def _legacy_connection(self) -> FifoConnection:
        rfd, keep = os.open(self.path, _RD), os.open(self.path, _WR)
        return FifoConnection(rfd, -1, f"sspi writers on {self.path}",
                              one_way="sspi FIFO is one-way", keep=keep)

    def _next_hello(self) -> Connection | None:
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            if m := HELLO.fullmatch(line):
                conn = self._open_session(int(m[1]), m[2].decode())
                if conn:
                    return conn
        if len(self._pending) > 256:  # garbage without newlines: drop it
            self._pending.clear()
        return None

    def _open_session(self, pid: int, token: str) -> Connection | None:
        """None when the client gave up or died after its hello."""
        base = os.path.join(self.dir, f"c{pid}-{token}")
        paths = (f"{base}.c2s", f"{base}.s2c")
        rfd = wfd = -1
        try:
            rfd = os.open(paths[0], _RD)
            wfd = os.open(paths[1], _WR)  # ENXIO: its reader is gone
            _grow(rfd, self._pipe_size)
            _grow(wfd, self._pipe_size)
            os.write(wfd, ACK)
        except OSError:
            _close(rfd)
            _close(wfd)
            for path in paths:
                _unlink(path)
            return None
        return FifoConnection(rfd, wfd, f"fifo client pid {pid}", paths)

    def _on_close(self) -> None:
        super()._on_close()
        _unlink(self.path)
        if not self._legacy and os.path.isdir(self.dir):
            self._sweep()
            if self._made_dir:
                _unlink(os.path.join(self.dir, CREATED_MARK))
                with contextlib.suppress(OSError):
                    os.rmdir(self.dir)
        self._lock_file.release()

    def _release(self) -> None:
        _close(self._rfd)
        _close(self._wfd)
        super()._release()


class FifoTransport(Transport):
    scheme: ClassVar[str] = "fifo"
    crosses_netns: ClassVar[bool] = True
    message_boundaries: ClassVar[bool] = False
    max_message_size: ClassVar[int | None] = None

    @classmethod
    def listen(cls, endpoint: Endpoint) -> Listener:
        return FifoListener(endpoint)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        if endpoint.codec == "sspi":
            return _connect_legacy(endpoint)
        return _connect(endpoint, deadline_after(timeout), timeout)


def _connect_legacy(endpoint: Endpoint) -> Connection:
    """A writer like the C programs: recv only waits for the server to go away."""
    path = endpoint.address
    if os.path.isdir(path):
        path = os.path.join(path, LEGACY_NAME)
    try:
        wfd = os.open(path, _WR)
    except FileNotFoundError:
        raise ConnectError(f"no sspi FIFO at {path} (is the server running?)") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ConnectError(f"nobody reads the sspi FIFO {path} (server dead?)") from None
        raise ConnectError(f"cannot open sspi FIFO {path}: {exc}") from exc
    return FifoConnection(-1, wfd, f"sspi server at {path}")


def _connect(endpoint: Endpoint, deadline: float | None, timeout: float) -> Connection:
    folder = endpoint.address
    request = os.path.join(folder, REQUEST)
    try:
        if not stat.S_ISFIFO(os.stat(request).st_mode):
            raise ConnectError(f"{request} is not a FIFO: not an ipcgw fifo server")
    except (FileNotFoundError, NotADirectoryError):
        raise ConnectError(f"no ipcgw fifo server at {folder} ({request} missing)") from None
    except OSError as exc:
        raise ConnectError(f"fifo connect to {folder}: {exc}") from exc
    pid, token = os.getpid(), secrets.token_hex(8)
    base = os.path.join(folder, f"c{pid}-{token}")
    paths = (f"{base}.c2s", f"{base}.s2c")
    fds: list[int] = []
    try:
        for path in paths:
            _mkfifo(path, endpoint.mode)
        rfd = os.open(paths[1], _RD)
        fds.append(rfd)
        fds.append(os.open(paths[0], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))  # placeholder
        try:
            req = os.open(request, _WR)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise ConnectError(f"nobody reads {request}: the fifo server there is dead "
                                   "(a new one will reclaim it)") from None
            raise
        fds.append(req)
        hello = f"IPCGW-FIFO 1 {pid} {token}\n".encode()
        poll = select.poll()
        poll.register(req, _OUT)
        while True:
            try:
                os.write(req, hello)  # < PIPE_BUF: all or nothing
                break
            except BlockingIOError:
                if not poll.poll(_ms(deadline)):
                    raise ConnectError(f"fifo server at {folder} is not reading hellos "
                                       f"(waited {timeout} s)") from None
        poll = select.poll()
        poll.register(rfd, _IN)
        poll.register(req, 0)  # POLLERR: the server's reader went away (it died)
        events = dict(poll.poll(_ms(deadline)))
        if rfd not in events:
            if req in events:
                raise ConnectError(f"fifo server at {folder} went away during the handshake")
            raise ConnectError(f"fifo server at {folder} did not answer within {timeout} s")
        if os.read(rfd, 1) != ACK:
            raise ConnectError(f"fifo server at {folder} refused the session")
        wfd = os.open(paths[0], _WR)  # the server reads it now, so no ENXIO
    except ConnectError:
        _abort(fds, paths)
        raise
    except OSError as exc:
        _abort(fds, paths)
        raise ConnectError(f"fifo connect to {folder}: {exc}") from exc
    for fd in fds[1:]:
        _close(fd)
    return FifoConnection(rfd, wfd, f"fifo server at {folder}", paths)


def _abort(fds: list[int], paths: Sequence[str]) -> None:
    for fd in fds:
        _close(fd)
    for path in paths:
        _unlink(path)
