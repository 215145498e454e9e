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
- Legacy ``sspi`` codec: one plain FIFO a C program opens and writes to
  (:mod:`ipcgw.transports.legacy_fifo`).
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
premature EOF), then writes ``b"IPCGW-FIFO 1 <pid> <hex> <framing> <codec>\\n"``
(atomic, < PIPE_BUF; the last two fields are optional for older clients) to
``ipcgw.req``. The server opens ``.c2s`` for reading and ``.s2c`` for writing
and writes one ACK byte, or NAK and a one-line reason (a framing or codec
other than its own); the client then opens ``.c2s`` write-only and drops the
placeholder. Names come from the hello's fields, never from paths in it.
Both sides unlink the pair when the session ends; the server also sweeps
every ``c*-*.c2s|s2c`` at start (after a crash) and at close.

Trust
=====
The directory is the boundary: the server serves only in a directory owned by
its own uid and writable by nobody else (it refuses any other, e.g. one a
local user pre-created in /tmp, with a hint), and works relative to an fd of
it, so a rename of the path cannot move it elsewhere. Only the server's uid
(and root) can then create, replace or link anything in it. Clients keep
creating their own FIFO pair, which is what lets non-root clients of the
server's uid work (the server cannot make FIFOs the client may open without
knowing who it is), and what names the peer: the server opens both with
``O_NOFOLLOW`` and checks with ``fstat`` that each is a FIFO, both have one
owner, and that owner is its uid or root; that owner becomes ``peer_uid``
(and the FIFO's group ``peer_gid``). Anything else is refused with a log line.
Clients, in turn, refuse a directory owned by another user or writable by
group/others: it is not one an ipcgw server would serve in. Another uid
cannot use this transport; use unix sockets (SO_PEERCRED) for that.

The request FIFO is checked about once a second: if it was removed or
replaced (a /tmp cleaner, a stray ``rm``), the server, which holds the
ServerLock for DIR, makes a new one and says so in the log.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import select
import stat
import threading
import time
from collections.abc import Collection, Sequence
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

__all__ = ["FifoConnection", "FifoListener", "FifoTransport", "NotOurs", "open_fifo"]

log = logging.getLogger(__name__)

REQUEST = "ipcgw.req"
LEGACY_NAME = "mptcp-ns3-fifo"
CREATED_MARK = ".ipcgw-created"  # DIR was made by an ipcgw server: the next one may rmdir it
HELLO = re.compile(rb"IPCGW-FIFO 1 (\d{1,10}) ([0-9a-f]{16})(?: ([\w:.-]{1,64}) ([\w.-]{1,64}))?\n")
SESSION = re.compile(r"c\d+-[0-9a-f]{16}\.(c2s|s2c)")
ACK, NAK = b"\x06", b"\x15"
CHUNK = 1 << 20
REQUEST_CHECK_S = 1.0  # how often accept() makes sure ipcgw.req is still there
_RD = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_WR = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
_SAFE = os.O_NOFOLLOW | os.O_NOCTTY
_IN, _OUT = select.POLLIN, select.POLLOUT
_GONE = select.POLLERR | select.POLLHUP | select.POLLNVAL


class NotOurs(ConnectError):
    """A name the server was about to use is not what it made (symlink, other owner, not a FIFO)."""


def _ms(deadline: float | None) -> int | None:
    left = remaining(deadline)
    return None if left is None else int(left * 1000 + 0.999)


def open_fifo(name: str, flags: int, owners: Collection[int] | None, *,
              dir_fd: int | None = None, what: str = "") -> tuple[int, os.stat_result]:
    """Open a FIFO without following a symlink, then check what was opened:
    a FIFO, owned by one of ``owners`` (None: anyone). NotOurs otherwise."""
    what = what or name
    try:
        fd = os.open(name, flags | _SAFE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotOurs(f"{what} is a symbolic link, not a FIFO; not following it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            raise NotOurs(f"{what} is not a FIFO; not touching it")
        if owners is not None and st.st_uid not in owners:
            raise NotOurs(f"{what} is owned by uid {st.st_uid}, not by "
                          f"{' or '.join(f'uid {u}' for u in sorted(owners))}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _unlink(name: str, dir_fd: int | None = None) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(name, dir_fd=dir_fd)


def _unlink_if(name: str, ident: tuple[int, int], dir_fd: int | None = None) -> None:
    """Remove ``name`` only while it is still the object we made."""
    with contextlib.suppress(OSError):
        if _ident(os.stat(name, dir_fd=dir_fd, follow_symlinks=False)) == ident:
            os.unlink(name, dir_fd=dir_fd)


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _grow(fd: int, size: int) -> None:
    """Bigger pipes mean fewer wakeups for big frames; a refusal only costs speed."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def _open_dir(path: str, *, create: bool) -> tuple[int, bool]:
    """(fd of DIR, whether we made it), DIR being owned by us and writable by nobody else."""
    made = False
    if create:
        try:
            os.mkdir(path, 0o700)
            made = True
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise ConnectError(f"fifo directory {path} is a symbolic link: not following it; "
                               "use the real path") from None
        if exc.errno == errno.ENOTDIR:
            raise ConnectError(f"fifo URL needs a directory: {path} is not") from None
        raise
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if create and st.st_uid != me:
            raise ConnectError(
                f"fifo directory {path} is owned by uid {st.st_uid}, not by this server "
                f"(uid {me}): another user may have made it; remove it or pick another path")
        if not create and st.st_uid not in (me, 0):
            raise ConnectError(f"fifo directory {path} is owned by uid {st.st_uid}: not an ipcgw "
                               "server of yours or root's; check the URL")
        if made:
            os.fchmod(fd, 0o700)  # the umask must not narrow (or widen) it
            st = os.fstat(fd)
        if st.st_mode & 0o022:
            raise ConnectError(
                f"fifo directory {path} is writable by group/others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): anyone could replace its FIFOs; "
                "remove it or pick another path")
    except BaseException:
        os.close(fd)
        raise
    return fd, made
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
    """One FIFO pair (either may be absent: a legacy sspi writer is one-way).

    ``names`` are unlinked at close, relative to ``dir_fd`` (which we then own
    and close), so a path renamed meanwhile cannot redirect the unlink.
    """

    def __init__(self, rfd: int, wfd: int, peer: str, names: Sequence[str] = (),
                 dir_fd: int = -1) -> None:
        super().__init__()
        self._rfd, self._wfd, self._names = rfd, wfd, tuple(names)
        self._dir_fd = dir_fd
        self.peer = peer
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._send_lock = threading.Lock()
        # Whether to read before polling: yes while reads fill the buffer (a stream
        # keeps data waiting), no while a reader waits for each reply (request/reply),
        # where the read would miss and cost a syscall and an exception per message.
        self._streaming = True
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
        return self._view[:self.recv_into(self._view, timeout)].tobytes()

    reads_into = True

    def recv_into(self, buf: memoryview, timeout: float | None = None) -> int:
        self._enter()
        try:
            if self.closed:
                return 0
            if self._rfd >= 0 and self._streaming:
                try:  # data is likely there already: no poll needed
                    return os.readv(self._rfd, (buf,))
                except BlockingIOError:  # a miss costs a syscall and an exception:
                    self._streaming = False  # poll first until a read fills the buffer
            deadline = deadline_after(timeout)
            while True:
                events = self._rpoll.poll(_ms(deadline))
                if self.closed:
                    return 0
                if not events:
                    raise Timeout(f"nothing from {self.peer} within {timeout} s")
                if self._rfd >= 0:
                    try:
                        n = os.readv(self._rfd, (buf,))
                    except BlockingIOError:
                        pass
                    else:
                        self._streaming = n == len(buf)
                        return n
                if any(fd == self._wfd and ev & _GONE for fd, ev in events):
                    return 0  # peer died before (or without) opening its write end
        except OSError as exc:
            raise Disconnected(f"fifo read from {self.peer}: {exc}") from exc
        finally:
            self._leave()

    def send(self, data: Buffer) -> None:
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
        except OSError as exc:  # EPIPE mostly: the reader is gone
            raise Disconnected(f"fifo write to {self.peer}: {exc}") from exc
        finally:
            self._leave()

    def sendv(self, parts: Sequence[Buffer]) -> None:
        views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
        self._enter()
        try:
            with self._send_lock:
                self._write_all(views)
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
        self._enter()  # a thread woken below must not release _dir_fd while we use it
        try:
            super()._on_close()
            for name in self._names:
                _unlink(name, self._dir_fd if self._dir_fd >= 0 else None)
        finally:
            self._leave()

    def _release(self) -> None:
        _close(self._rfd)
        _close(self._wfd)
        _close(self._dir_fd)
        super()._release()


class FifoListener(_Closable, Listener):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._pipe_size = int(endpoint.params.get("pipe_size", CHUNK))
        self._rfd = self._wfd = self._dfd = -1
        self._req: tuple[int, int] = (-1, -1)
        self._made_dir = False
        self._pending = bytearray()
        self._checked = time.monotonic()
        self._failed = ""
        self.dir = endpoint.address
        self.path = os.path.join(self.dir, REQUEST)
        self._me = os.geteuid()
        self._lock_file = ServerLock("fifo", self.dir)
        self._lock_file.acquire()  # refuses first: nothing to undo yet
        super().__init__()
        try:
            self._open_dir()
            self._sweep()  # we hold the lock: whatever is there is a dead server's
            self._make_request()
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise TransportError(f"cannot listen on {self.path}: {exc}") from exc
            raise

    def _open_dir(self) -> None:
        dfd, made = _open_dir(self.dir, create=True)
        _close(self._dfd)
        self._dfd, self._dir_ident = dfd, _ident(os.fstat(dfd))
        if made:
            os.close(os.open(CREATED_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE | os.O_CLOEXEC,
                             0o600, dir_fd=dfd))
        try:
            os.stat(CREATED_MARK, dir_fd=dfd, follow_symlinks=False)
            self._made_dir = True
        except FileNotFoundError:
            self._made_dir = False

    def _make_request(self) -> None:
        """(Re)create ipcgw.req; the old fds, if any, are drained into the hello buffer first."""
        _unlink(REQUEST, self._dfd)
        os.mkfifo(REQUEST, self.endpoint.mode, dir_fd=self._dfd)
        rfd, st = open_fifo(REQUEST, _RD, {self._me}, dir_fd=self._dfd, what=self.path)
        try:
            os.fchmod(rfd, self.endpoint.mode)  # the umask must not narrow (or widen) the URL's mode
            wfd, wst = open_fifo(REQUEST, _WR, {self._me}, dir_fd=self._dfd, what=self.path)
        except BaseException:
            os.close(rfd)
            raise
        if _ident(wst) != _ident(st):
            os.close(rfd)
            os.close(wfd)
            raise NotOurs(f"{self.path} changed while the server opened it")
        _grow(rfd, self._pipe_size)
        if self._rfd >= 0:
            with contextlib.suppress(OSError):
                self._pending += os.read(self._rfd, 65536)
        _close(self._rfd)
        _close(self._wfd)
        self._rfd, self._wfd, self._req = rfd, wfd, _ident(st)  # ours: no EOF when writers come and go
        self._poll = select.poll()
        self._poll.register(self._wake, _IN)
        self._poll.register(self._rfd, _IN)

    def _check_request(self) -> None:
        """Keep serving when ipcgw.req (or DIR) was removed or replaced under us (#22)."""
        self._checked = time.monotonic()
        try:
            dir_ok = _ident(os.stat(self.dir, follow_symlinks=False)) == self._dir_ident
        except OSError:
            dir_ok = False
        with contextlib.suppress(FileNotFoundError):
            if dir_ok and _ident(os.stat(REQUEST, dir_fd=self._dfd, follow_symlinks=False)) == self._req:
                return
        try:
            if self._failed:
                pass
            elif dir_ok:
                log.warning("fifo request FIFO %s was removed or replaced: making a new one", self.path)
            else:
                log.warning("fifo directory %s was removed or replaced: making a new one", self.dir)
            if not dir_ok:
                self._open_dir()
            self._make_request()
            self._failed = ""
        except (OSError, ConnectError) as exc:
            if str(exc) != self._failed:  # one line per cause, not one a second
                log.error("cannot recreate %s, new clients cannot connect: %s", self.path, exc)
            self._failed = str(exc)

    def _sweep(self) -> None:
        for name in os.listdir(self._dfd):
            if name == REQUEST or SESSION.fullmatch(name):
                _unlink(name, self._dfd)

    def accept(self) -> Connection:
        self._enter()
        try:
            while not self.closed:
                if conn := self._next_hello():
                    return conn
                events = self._poll.poll(int(REQUEST_CHECK_S * 1000))
                if self.closed:
                    break
                if not events or time.monotonic() - self._checked > REQUEST_CHECK_S:
                    self._check_request()
                with contextlib.suppress(BlockingIOError):
                    self._pending += os.read(self._rfd, 4096)
            raise ListenerClosed(f"fifo listener on {self.path} closed")
        finally:
            self._leave()

    def _next_hello(self) -> Connection | None:
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            if m := HELLO.fullmatch(line):
                theirs = None if m[3] is None else (m[3].decode(), m[4].decode())
                conn = self._open_session(int(m[1]), m[2].decode(), theirs)
                if conn:
                    return conn
        if len(self._pending) > 256:  # garbage without newlines: drop it
            self._pending.clear()
        return None

    def _open_session(self, pid: int, token: str, theirs: tuple[str, str] | None) -> Connection | None:
        """None when the client gave up, died after its hello, or was refused."""
        base = f"c{pid}-{token}"
        names = (f"{base}.c2s", f"{base}.s2c")
        rfd = wfd = -1
        try:
            rfd, st = open_fifo(names[0], _RD, {self._me, 0}, dir_fd=self._dfd,
                                what=os.path.join(self.dir, names[0]))
            # The same owner for both: one client made the pair.
            wfd, _ = open_fifo(names[1], _WR, {st.st_uid}, dir_fd=self._dfd,
                               what=os.path.join(self.dir, names[1]))  # ENXIO: its reader is gone
            ours = (self.endpoint.framing, self.endpoint.codec)
            if theirs is not None and theirs != ours:
                reason = (f"client uses framing {theirs[0]} / codec {theirs[1]}, this server uses "
                          f"{ours[0]} / {ours[1]}: use the same framing and codec as the server's URL")
                log.warning("fifo client pid %d refused: %s", pid, reason)
                os.write(wfd, NAK + reason.encode()[:1000] + b"\n")
                raise NotOurs(reason)
            _grow(rfd, self._pipe_size)
            _grow(wfd, self._pipe_size)
            os.write(wfd, ACK)
        except (OSError, NotOurs) as exc:
            if isinstance(exc, NotOurs) and not exc.args[0].startswith("client uses"):
                log.warning("fifo client pid %d refused: %s", pid, exc)
            _close(rfd)
            _close(wfd)
            for name in names:
                _unlink(name, self._dfd)
            return None
        conn = FifoConnection(rfd, wfd, f"fifo client pid {pid}", names, os.dup(self._dfd))
        conn.peer_uid, conn.peer_gid = st.st_uid, st.st_gid
        return conn

    def _on_close(self) -> None:
        self._enter()  # a thread woken below must not release _dfd while we use it
        try:
            super()._on_close()
            self._remove_names()
        finally:
            self._leave()
        self._lock_file.release()

    def _remove_names(self) -> None:
        if self._dfd >= 0:
            _unlink_if(REQUEST, self._req, self._dfd)
            with contextlib.suppress(OSError):
                self._sweep()
            if self._made_dir:
                _unlink(CREATED_MARK, self._dfd)
                with contextlib.suppress(OSError):
                    if _ident(os.stat(self.dir, follow_symlinks=False)) == self._dir_ident:
                        os.rmdir(self.dir)

    def _release(self) -> None:
        _close(self._rfd)
        _close(self._wfd)
        _close(self._dfd)
        super()._release()


class FifoTransport(Transport):
    scheme: ClassVar[str] = "fifo"
    crosses_netns: ClassVar[bool] = True
    message_boundaries: ClassVar[bool] = False
    max_message_size: ClassVar[int | None] = None

    @classmethod
    def listen(cls, endpoint: Endpoint) -> Listener:
        if endpoint.oneway:
            from ipcgw.transports.legacy_fifo import LegacyFifoListener

            return LegacyFifoListener(endpoint)
        return FifoListener(endpoint)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        if endpoint.oneway:
            from ipcgw.transports.legacy_fifo import connect_legacy

            return connect_legacy(endpoint)
        return _connect(endpoint, deadline_after(timeout), timeout)


def _connect(endpoint: Endpoint, deadline: float | None, timeout: float) -> Connection:
    folder = endpoint.address
    request = os.path.join(folder, REQUEST)
    try:
        dfd, _ = _open_dir(folder, create=False)
    except (FileNotFoundError, NotADirectoryError):
        raise ConnectError(f"no ipcgw fifo server at {folder} ({request} missing)") from None
    except ConnectError as exc:
        if "needs a directory" in str(exc):
            raise ConnectError(f"no ipcgw fifo server at {folder}: not a directory") from None
        raise
    except OSError as exc:
        raise ConnectError(f"fifo connect to {folder}: {exc}") from exc
    pid, token = os.getpid(), secrets.token_hex(8)
    base = f"c{pid}-{token}"
    names = (f"{base}.c2s", f"{base}.s2c")
    me = {os.geteuid()}
    fds: list[int] = []
    try:
        try:
            if not stat.S_ISFIFO(os.stat(REQUEST, dir_fd=dfd).st_mode):
                raise ConnectError(f"{request} is not a FIFO: not an ipcgw fifo server")
        except FileNotFoundError:
            raise ConnectError(f"no ipcgw fifo server at {folder} ({request} missing)") from None
        for name in names:
            os.mkfifo(name, endpoint.mode, dir_fd=dfd)
        rfd, _ = open_fifo(names[1], _RD, me, dir_fd=dfd)
        fds.append(rfd)
        os.fchmod(rfd, endpoint.mode)  # the umask must not narrow (or widen) what the URL asked for
        placeholder, _ = open_fifo(names[0], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC, me, dir_fd=dfd)
        fds.append(placeholder)
        os.fchmod(placeholder, endpoint.mode)
        try:
            req = os.open(REQUEST, _WR | _SAFE, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise ConnectError(f"nobody reads {request}: the fifo server there is dead "
                                   "(a new one will reclaim it)") from None
            raise
        fds.append(req)
        hello = f"IPCGW-FIFO 1 {pid} {token} {endpoint.framing} {endpoint.codec}\n".encode()
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
        answer = os.read(rfd, 1)
        if answer == NAK:
            raise ConnectError(f"fifo server at {folder} refused the session: {_reason(rfd, deadline)}")
        if answer != ACK:
            raise ConnectError(f"fifo server at {folder} refused the session")
        try:
            wfd, _ = open_fifo(names[0], _WR, me, dir_fd=dfd)  # the server reads it now, so no ENXIO
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENXIO):
                raise
            # The server ended the session right after accepting it (say, one client
            # too many): what it said waits in .s2c, so hand out the pipe to read it.
            wfd = os.dup(placeholder)
    except ConnectError:
        _abort(fds, names, dfd)
        raise
    except OSError as exc:
        _abort(fds, names, dfd)
        raise ConnectError(f"fifo connect to {folder}: {exc}") from exc
    for fd in fds[1:]:
        _close(fd)
    return FifoConnection(rfd, wfd, f"fifo server at {folder}", names, dfd)


def _reason(rfd: int, deadline: float | None) -> str:
    """The server's one-line refusal, read until its newline or EOF (bounded)."""
    text = b""
    poll = select.poll()
    poll.register(rfd, _IN)
    while b"\n" not in text and len(text) < 2000 and poll.poll(_ms(deadline)):
        try:
            if not (chunk := os.read(rfd, 2000)):
                break
        except BlockingIOError:
            continue
        text += chunk
    return text.split(b"\n", 1)[0].decode(errors="replace") or "no reason given"


def _abort(fds: list[int], names: Sequence[str], dfd: int) -> None:
    for fd in fds:
        _close(fd)
    for name in names:
        _unlink(name, dfd)
    _close(dfd)
