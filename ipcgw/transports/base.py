"""What every transport provides: a listener that accepts connections, and
connections that move bytes. Transports know nothing of frames or messages.

A transport module defines one ``Transport`` subclass with:

- capabilities as class attributes (``crosses_netns``, ``message_boundaries``,
  ``max_message_size``) so the docs, the CLI and the tests can ask;
- ``listen(endpoint) -> Listener`` for the server, which also detects and
  reclaims objects a crashed server left behind (see :class:`ServerLock`);
- ``connect(endpoint, timeout) -> Connection`` for clients, raising
  ``ConnectError`` within ``timeout`` when no server is there.

Connections are byte pipes: ``send`` writes everything or raises, ``recv``
returns some bytes, ``b""`` at an orderly end, and raises ``Disconnected`` when
the peer died and ``Timeout`` when nothing came in time. The contract:

- one thread at a time in ``recv`` (the channel above serialises readers);
  ``send`` may be called from several threads (the channel holds a lock);
- ``close()`` may come from any thread, wakes a blocked ``recv``/``accept``,
  after which ``recv`` returns ``b""``;
- a stream transport cannot tell ``kill -9`` from an orderly close: both are
  ``b""``; queue transports detect a dead peer by its pid;
- ``Listener.close()`` removes the OS names (FIFOs, socket files, queues) but
  leaves accepted connections to their owner (the gateway closes sessions).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

try:  # the C function: signal.pthread_sigmask converts every returned mask to enums (3x slower)
    from _signal import pthread_sigmask as _sigmask
except ImportError:  # pragma: no cover - not CPython
    _sigmask = signal.pthread_sigmask

from ipcgw.errors import ConnectError, ListenerClosed, TransportError
from ipcgw.url import Endpoint

__all__ = [
    "SYSTEM_RUN_DIR",
    "Buffer",
    "CloseOnce",
    "Connection",
    "Listener",
    "ListenerClosed",
    "ServerLock",
    "Transport",
    "call_holding_signals",
    "deadline_after",
    "is_disconnect",
    "open_private",
    "pid_alive",
    "remaining",
    "run_dir",
]

Buffer = bytes | bytearray | memoryview


class Connection(ABC):
    """A bidirectional byte pipe to one peer."""

    #: Human-readable peer description for server logs.
    peer: str = "?"
    #: Seconds a ``send`` may block on a peer that does not read before the
    #: connection is given up (server side); None blocks forever.
    send_timeout: float | None = None
    #: Who the peer is, as far as the OS can tell: SO_PEERCRED on unix sockets,
    #: the owner of the object the peer created or opened on the others. None
    #: when the OS cannot tell (TCP): the session layer then trusts it only
    #: with a token. Set by the transport before the connection is returned.
    peer_uid: int | None = None
    peer_gid: int | None = None

    @abstractmethod
    def send(self, data: Buffer) -> None:
        """Write all of ``data`` or raise Disconnected / Timeout."""

    #: Below this many bytes in all, :meth:`sendv` joins its parts into one send.
    join_below: int = 64 * 1024

    def sendv(self, parts: Sequence[Buffer]) -> None:
        """Write several buffers as one stream write: small ones joined, large ones
        each sent from its own buffer (a bulk payload is not copied to be sent).
        Transports with a gather write (sendmsg, writev) override this."""
        if sum(memoryview(p).nbytes for p in parts) < self.join_below:
            self.send(b"".join(parts))
            return
        for part in parts:
            self.send(part)

    @abstractmethod
    def recv(self, timeout: float | None = None) -> bytes:
        """Some bytes (at least one), ``b""`` at an orderly end of stream."""

    #: True when :meth:`recv_into` reads without a copy (stream transports): the
    #: channel then lets a large frame's bytes land in the frame's own buffer.
    reads_into: bool = False

    def recv_into(self, buf: memoryview, timeout: float | None = None) -> int:
        """Like :meth:`recv`, into ``buf``: how many bytes (at least one), 0 at an
        orderly end of stream. Only called when :attr:`reads_into` is True."""
        raise NotImplementedError(f"{type(self).__name__} cannot recv_into")

    @abstractmethod
    def close(self) -> None:
        """Release OS objects; idempotent; wakes a recv blocked in another thread."""

    def expect_reply(self, within: float) -> None:  # noqa: B027 - a hint most transports ignore
        """A hint: the next ``recv`` awaits a reply the peer needs about ``within``
        seconds to produce (a kernel command, not an echo). A transport that spins
        before it sleeps may spin that long, once; the others ignore it."""


class CloseOnce:
    """close() from any thread (or a signal handler) while other threads are
    inside recv/send/accept, without an fd or a mapping being freed under them.

    ``close()`` runs ``_on_close`` at once (wake the blocked threads, unlink
    names); ``_release`` frees what they may still be using, and runs exactly
    once, in whichever thread leaves last. Bookkeeping is list append/pop,
    which the GIL makes atomic: a lock would cost more than the syscall it
    guards on the hot path, and could deadlock a signal handler. Operations
    bracket themselves with ``_enter``/``_leave`` and check ``closed`` first.
    """

    def __init__(self) -> None:
        self._users: list[None] = []
        self._open = [True]  # popped once by close()
        self._unreleased = [True]  # popped once by whoever releases
        self.closed = False

    def _enter(self) -> None:
        self._users.append(None)

    def _leave(self) -> None:
        self._users.pop()
        if self.closed and not self._users:
            self._release_once()

    def close(self) -> None:
        try:
            self._open.pop()
        except IndexError:
            return
        self.closed = True
        self._on_close()
        if not self._users:
            self._release_once()

    def _release_once(self) -> None:
        try:
            self._unreleased.pop()
        except IndexError:
            return
        self._release()

    def _on_close(self) -> None:
        """Work that must happen at close() even while others are still inside."""

    def _release(self) -> None:
        """Free what threads inside recv/send/accept may still be using."""


class Listener(ABC):
    """Server side of a transport: accepts connections until closed."""

    endpoint: Endpoint

    @abstractmethod
    def accept(self) -> Connection:
        """Block until a client connects; ListenerClosed once close() was called."""

    @abstractmethod
    def close(self) -> None:
        """Stop accepting and remove every OS object the listener created."""


class Transport(ABC):
    """One IPC mechanism, selected by URL scheme."""

    scheme: ClassVar[str]
    #: Works with ``ip netns exec NS ipcgw serve`` and a client outside NS.
    crosses_netns: ClassVar[bool]
    #: The OS keeps message boundaries (queues) rather than a byte stream.
    message_boundaries: ClassVar[bool]
    #: Largest single OS message, None for streams; frames larger are split.
    max_message_size: ClassVar[int | None] = None

    @classmethod
    @abstractmethod
    def listen(cls, endpoint: Endpoint) -> Listener: ...

    @classmethod
    @abstractmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection: ...


#: Where a root server keeps its lock and record files: on /run, shared by every
#: network namespace (``ip netns exec`` remounts only /sys), and writable by root only.
SYSTEM_RUN_DIR = "/run/ipcgw"


def run_dir(create: bool = True) -> str:
    """The private directory (0700, ours) for this process's lock and record files.

    Files a root server opens in a world-writable directory (/tmp) can be
    planted by anyone: a symlink makes root truncate its target, a forged
    record makes it remove other programs' queues. So root uses
    ``/run/ipcgw``; other users ``$XDG_RUNTIME_DIR/ipcgw`` or ``/tmp/ipcgw-UID``.
    With ``create`` the directory is made if missing and then checked: a
    directory someone else prepared is refused, never repaired.
    """
    euid = os.geteuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if euid == 0 and os.path.isdir("/run"):
        path = SYSTEM_RUN_DIR
    elif xdg.startswith("/") and os.path.isdir(xdg):
        path = os.path.join(xdg, "ipcgw")
    else:
        path = os.path.join(tempfile.gettempdir(), f"ipcgw-{euid}")
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o077:
            what = ("not a directory (a symlink?)" if not stat.S_ISDIR(st.st_mode) else
                    f"owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}")
            raise TransportError(
                f"{path} must be a private directory of uid {euid} (mode 0700) but is {what}: "
                f"someone else may have made it; remove it (rm -r {path}) and retry")
    return path


def open_private(path: str, flags: int, mode: int = 0o600) -> int:
    """An fd on ``path``, a regular file of ours that only we may touch, or raise.

    ``O_NOFOLLOW`` so a planted symlink is refused rather than followed, then
    ``fstat``: a file another user made (or made readable to others) is not
    one we wrote, and its contents must not be trusted.
    """
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise TransportError(
            f"{path} is not a private file of uid {os.geteuid()} (owner {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}): refusing to use it; remove it if it is stale")
    return fd


class ServerLock:
    """Who owns a server name, across crashes: an ``flock`` on a lock file.

    The kernel drops the lock when the owner dies, however it dies, so a new
    server that gets the lock knows every object under that name is stale and
    may reclaim it; one that cannot get it names the live owner's pid.
    Lock files live in :func:`run_dir` (``/run/ipcgw`` for root), which (unlike
    abstract sockets and TCP ports) is shared across network namespaces and
    which no other user can write into.
    """

    def __init__(self, scheme: str, name: str, directory: str | None = None) -> None:
        safe = name.strip("/").replace("/", "_") or "root"
        self._dir = directory
        self.path = os.path.join(directory or run_dir(create=False), f"ipcgw-{scheme}-{safe}.lock")
        self._fd = -1

    def acquire(self) -> None:
        if self._dir is None:
            run_dir()  # make and check it
        while True:
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConnectError(
                    f"a live ipcgw server (pid {owner}) already serves this address "
                    f"(lock {self.path}); stop it or pick another address"
                ) from None
            # The previous owner unlinks the file on release: if we locked a file
            # that is no longer at the path, another server may lock a new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = -1


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists (zombies count as dead for our purpose)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True


T = TypeVar("T")
_MAIN_THREAD = threading.main_thread().ident
#: Signals whose Python handlers are expected to raise: Ctrl-C, kill, hang-up, ...
_HELD_SIGNALS = frozenset(int(s) for s in (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGALRM))


def call_holding_signals(blocking: Callable[..., T], *args: object) -> T:
    """``blocking(*args)``, a posix_ipc wait, without losing a signal handler's exception.

    When a signal interrupts a posix_ipc wait, posix_ipc runs the Python
    handlers and then replaces what they raised (KeyboardInterrupt, a SIGTERM
    handler's SystemExit) by its own SignalError (posix_ipc issue #30). Only
    the main thread runs handlers, so there the common signals are held
    during the wait (~1.3 us: two sigprocmask calls) and delivered when it
    returns: the handler then raises from the caller as usual. Elsewhere the
    call is made as is and SignalError means "retry".
    """
    if threading.get_ident() != _MAIN_THREAD:
        return blocking(*args)
    old = _sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        return blocking(*args)
    finally:
        _sigmask(signal.SIG_SETMASK, old)


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def is_disconnect(exc: OSError) -> bool:
    """Errors that mean the peer is gone rather than that we are broken."""
    return exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN,
                         errno.ECONNABORTED, errno.EBADF)
