"""Stream sockets: TCP and Unix domain (path or abstract).

Features
    Byte streams with kernel flow control; ``TCP_NODELAY`` so small frames
    leave at once; scatter ``sendmsg`` so a length header is never copied onto
    a large payload; ``recv_into`` one reusable buffer.

URL
    ``tcp://HOST:PORT`` - does not cross network namespaces: a server run with
    ``ip netns exec NS`` listens in NS, so give the client a route into NS
    (a veth pair, see ``ipcgw testbed``) and use the NS address.
    ``unix:///PATH`` - a socket file; crosses network namespaces (the file
    system is shared). ``unix:@NAME`` - abstract socket: bound to the network
    namespace, so a client outside the server's namespace cannot see it; use a
    path socket for that. ``?server_uid=N[,M]`` (client): also trust a unix
    server run by these uids (see Trust).

Trust (the server usually runs as root)
    A path socket lives where others may write (/tmp): the server refuses a
    name that is a symbolic link, not a socket, or another user's, naming the
    owner; it reclaims a dead socket of its own uid only under its
    ``ServerLock``. It binds the socket with the endpoint's mode (0600) in a
    private directory and hard-links it into place, so the file is never
    connectable with looser permissions and never replaces what is there.
    A client asks the kernel who serves a unix socket (``SO_PEERCRED``) and
    talks only to its own uid or root, or a uid in ``server_uid``. Accepted
    unix connections carry the peer's ``peer_uid``/``peer_gid``; TCP cannot
    tell (None). If the socket file is removed or replaced (a /tmp cleaner,
    ``rm``), the listener notices within a second and binds a new one while
    it still owns the name; open sessions do not notice.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import select
import shlex
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import ClassVar

from ipcgw.errors import ConnectError, Disconnected, Timeout
from ipcgw.transports.base import (
    Buffer,
    CloseOnce,
    Connection,
    Listener,
    ListenerClosed,
    ServerLock,
    Transport,
    is_disconnect,
)
from ipcgw.url import Endpoint

__all__ = ["TcpTransport", "UnixTransport"]

log = logging.getLogger("ipcgw.transports")

_RECV_SIZE = 256 * 1024
#: Seconds between checks that a unix listener's socket file is still its own.
HEAL_INTERVAL = 1.0
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


_TIMEVAL = struct.Struct("ll")
# A kernel receive timeout within this fraction of the one asked for is kept:
# re-setting it on every call would cost a syscall per message.
_SLACK = 0.05


class SocketConnection(Connection):
    """Blocking socket with its timeouts kept in the kernel (SO_RCVTIMEO /
    SO_SNDTIMEO): Python's own socket timeouts add a poll() before every call."""

    def __init__(self, sock: socket.socket, peer: str,
                 peer_uid: int | None = None, peer_gid: int | None = None) -> None:
        self.sock = sock
        self.peer = peer
        self.peer_uid = peer_uid
        self.peer_gid = peer_gid
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)
        self._rcvtimeo: float | None = None  # None: wait forever
        self._send_timeout: float | None = None
        sock.settimeout(None)

    @property
    def send_timeout(self) -> float | None:
        return self._send_timeout

    @send_timeout.setter
    def send_timeout(self, value: float | None) -> None:
        self._send_timeout = value
        self._kernel_timeout(socket.SO_SNDTIMEO, value)

    def _kernel_timeout(self, option: int, timeout: float | None) -> None:
        seconds = 0.0 if timeout is None else max(timeout, 1e-6)  # 0 means forever to the kernel
        self.sock.setsockopt(socket.SOL_SOCKET, option,
                             _TIMEVAL.pack(int(seconds), int(seconds % 1 * 1_000_000)))

    def send(self, data: Buffer) -> None:
        try:
            self.sock.sendall(data)
        except BlockingIOError:  # SO_SNDTIMEO passed without progress
            raise Timeout(f"{self.peer} did not read for {self._send_timeout} s") from None
        except OSError as exc:
            raise Disconnected(f"{self.peer}: {exc.strerror}") from None

    def sendv(self, parts: Sequence[Buffer]) -> None:
        try:
            sent = self.sock.sendmsg(parts)
            total = sum(len(p) for p in parts)
            if sent < total:  # rare: finish the tail with sendall
                self.sock.sendall(memoryview(b"".join(parts))[sent:])
        except BlockingIOError:
            raise Timeout(f"{self.peer} did not read for {self._send_timeout} s") from None
        except OSError as exc:
            raise Disconnected(f"{self.peer}: {exc.strerror}") from None

    def recv(self, timeout: float | None = None) -> bytes:
        return bytes(self._view[:self.recv_into(self._view, timeout)])

    reads_into = True

    def recv_into(self, buf: memoryview, timeout: float | None = None) -> int:
        try:
            if timeout is not None and timeout <= 0:
                return self.sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            current = self._rcvtimeo
            if timeout != current and (timeout is None or current is None
                                       or abs(timeout - current) > _SLACK * timeout):
                self._kernel_timeout(socket.SO_RCVTIMEO, timeout)
                self._rcvtimeo = timeout
            return self.sock.recv_into(buf)
        except BlockingIOError:  # SO_RCVTIMEO passed, or nothing there for timeout 0
            raise Timeout(f"nothing from {self.peer} within {timeout} s") from None
        except OSError as exc:
            if is_disconnect(exc):
                return 0
            raise Disconnected(f"{self.peer}: {exc.strerror}") from None

    def close(self) -> None:
        # shutdown wakes a recv blocked in another thread; close alone would not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class SocketListener(CloseOnce, Listener):
    """Accepts in a poll loop with a one-second tick: the tick is when a unix path
    listener checks that its socket file is still its own (``_PathName.heal``)."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket, name: _PathName | None) -> None:
        CloseOnce.__init__(self)
        self.endpoint = endpoint
        self.sock = sock
        self._name = name
        self._guard = threading.Lock()  # close() against a heal swapping the socket
        sock.setblocking(False)  # poll said ready, but the client may be gone by accept()

    def accept(self) -> Connection:
        self._enter()
        try:
            while not self.closed:
                sock = self.sock
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                ready = poller.poll(HEAL_INTERVAL * 1000)
                if self.closed:
                    break
                if self._name is not None and self._name.due():
                    self._heal()
                if not ready:
                    continue
                try:
                    csock, addr = sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError:
                    if self.closed or sock is not self.sock:
                        continue
                    raise
                return _accepted(csock, addr)
            raise ListenerClosed("listener closed")
        finally:
            self._leave()

    def _heal(self) -> None:
        assert self._name is not None
        with self._guard:
            if self.closed:
                return
            new = self._name.heal()
            if new is not None:
                new.setblocking(False)
                old, self.sock = self.sock, new
                old.close()  # only this thread polls it

    def _on_close(self) -> None:
        with self._guard:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes poll() in the accept thread
            if self._name is not None:
                self._name.remove()

    def _release(self) -> None:
        self.sock.close()


def _accepted(sock: socket.socket, addr: object) -> SocketConnection:
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host, port = addr[:2]  # type: ignore[index]
        return SocketConnection(sock, f"tcp {host}:{port}")
    pid, uid, gid = _peercred(sock)
    return SocketConnection(sock, f"unix pid {pid} uid {uid}", uid, gid)


def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected (client) or listened (server)."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid, gid


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


class _NameLock(ServerLock):
    """A ServerLock that can tell whether its lock file is still at its path (a /tmp
    cleaner may remove it, and then another server may lock a new one)."""

    def held(self) -> bool:
        if self._fd < 0:
            return False
        st, ours = _lstat(self.path), os.fstat(self._fd)
        return st is not None and (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)

    def forget(self) -> None:
        """Let go of a lock file no longer at the path, leaving whatever is there now."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _PathName:
    """A unix socket file this server made: checked, re-made and removed only while
    the server holds the name's lock, and only when the file is the one it made."""

    def __init__(self, path: str, mode: int) -> None:
        self.path, self.mode = path, mode
        self.lock = _NameLock("unix", path)
        self.lock.acquire()  # ConnectError naming the pid of a live server
        try:
            _clear_stale(path)
            self.sock, self._ident = _bind_private(path, mode)
        except BaseException:
            self.lock.release()
            raise
        self._next_check = time.monotonic() + HEAL_INTERVAL
        self._trouble = ""  # the last reason a heal failed, logged once

    def due(self) -> bool:
        return time.monotonic() >= self._next_check

    def _ours(self) -> bool:
        st = _lstat(self.path)
        return st is not None and (st.st_dev, st.st_ino) == self._ident

    def heal(self) -> socket.socket | None:
        """A new listening socket if ours was removed or replaced and the name is still ours."""
        self._next_check = time.monotonic() + HEAL_INTERVAL
        if self._ours():
            self._trouble = ""
            return None
        try:
            if not self.lock.held():
                fresh = _NameLock("unix", self.path)
                fresh.acquire()  # fails while another live server holds the name
                self.lock.forget()
                self.lock = fresh
            _clear_stale(self.path)  # refuses a squatter's file or a live server's
            sock, self._ident = _bind_private(self.path, self.mode)
        except ConnectError as exc:
            if str(exc) != self._trouble:
                self._trouble = str(exc)
                log.warning("socket file %s was removed or replaced; not binding a new one: %s",
                            self.path, exc)
            return None
        self._trouble = ""
        log.warning("socket file %s was removed or replaced; bound a new one (open sessions go on)",
                    self.path)
        return sock

    def remove(self) -> None:
        if self.lock.held():
            if self._ours():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            self.lock.release()
        else:
            self.lock.forget()  # the name went to someone else: leave their files alone


def _clear_stale(path: str) -> None:
    """Make room at ``path``: unlink a dead socket of our own uid, refuse anything
    else that is there. Only under the name's ServerLock (no live ipcgw server)."""
    st = _lstat(path)
    if st is None:
        return
    fix = f"remove it (rm {shlex.quote(path)}) if you trust it, or pick another path"
    if stat.S_ISLNK(st.st_mode):
        raise ConnectError(f"{path} is a symbolic link (to {os.readlink(path)!r}), "
                           f"not a socket this server made; {fix}")
    if st.st_uid != os.geteuid():
        kind = "a socket" if stat.S_ISSOCK(st.st_mode) else "a file"
        raise ConnectError(f"{path} is {kind} owned by {_user(st.st_uid)}, not by this server's "
                           f"{_user(os.geteuid())}: another user may be squatting the name; {fix}")
    if not stat.S_ISSOCK(st.st_mode):
        raise ConnectError(f"{path} exists and is not a socket; refusing to replace it; {fix}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        pid = _peercred(probe)[0]
    except ConnectionRefusedError:
        os.unlink(path)  # stale: ours, and nobody listens
        return
    except OSError:
        pid = 0  # a full backlog: someone listens
    finally:
        probe.close()
    raise ConnectError(f"a live server (pid {pid or '?'}) already listens on {path}; "
                       "stop it or pick another path")


def _bind_private(path: str, mode: int) -> tuple[socket.socket, tuple[int, int]]:
    """A socket listening at ``path`` with ``mode``, and the (dev, inode) of its file.

    Bound in a fresh 0700 directory beside ``path`` and chmod-ed there, then
    hard-linked into place: nobody can connect before the mode is right, link()
    fails rather than replace anything that appeared meanwhile, and no
    process-wide umask is changed under the other threads.
    """
    parent = os.path.dirname(path) or "."
    try:
        private = tempfile.mkdtemp(prefix=".i", dir=parent)
    except OSError as exc:
        raise ConnectError(f"cannot listen on {path}: {exc.strerror} (in {parent})") from None
    tmp = os.path.join(private, "s")
    dfd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # sun_path holds 107 bytes: a long directory is reached through our own fd
        sock.bind(tmp if len(os.fsencode(tmp)) < 108 else f"/proc/self/fd/{dfd}/s")
        os.chmod("s", mode, dir_fd=dfd)
        st = os.stat("s", dir_fd=dfd, follow_symlinks=False)
        sock.listen(128)
        try:
            os.link("s", path, src_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            _clear_stale(path)  # says who squats it (or that a server appeared)
            raise ConnectError(f"{path} appeared while binding it; try again") from None
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError) and not isinstance(exc, ConnectError):
            raise ConnectError(f"cannot listen on {path}: {exc.strerror}") from None
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink("s", dir_fd=dfd)
        os.close(dfd)
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return sock, (st.st_dev, st.st_ino)


class TcpTransport(Transport):
    scheme: ClassVar[str] = "tcp"
    crosses_netns: ClassVar[bool] = False
    message_boundaries: ClassVar[bool] = False

    @classmethod
    def listen(cls, endpoint: Endpoint) -> Listener:
        host, port = endpoint.host_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.listen(128)
        bound = sock.getsockname()
        address = f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
        return SocketListener(endpoint.with_address(address), sock, None)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        host, port = endpoint.host_port
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, None):
                hint = (
                    " (TCP does not cross network namespaces: a server inside a namespace "
                    "is reachable only through a route into it, e.g. the veth address of "
                    "`ipcgw testbed`; or use unix:///PATH, fifo, sysv or posixmq)"
                )
            reason = exc.strerror or str(exc) or "timed out"
            raise ConnectError(f"no server at tcp://{host}:{port}: {reason}{hint}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketConnection(sock, f"tcp {host}:{port}")


class UnixTransport(Transport):
    scheme: ClassVar[str] = "unix"
    crosses_netns: ClassVar[bool] = True  # path sockets; abstract ones do not
    message_boundaries: ClassVar[bool] = False

    @staticmethod
    def _sockaddr(endpoint: Endpoint) -> str:
        address = endpoint.address
        return "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def listen(cls, endpoint: Endpoint) -> Listener:
        addr = cls._sockaddr(endpoint)
        if not addr.startswith("\0"):
            name = _PathName(addr, endpoint.mode)
            return SocketListener(endpoint, name.sock, name)
        # Abstract: no file, no mode; the kernel refuses a name in use (EADDRINUSE).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            hint = "; stop that server or pick another name" if exc.errno == errno.EADDRINUSE else ""
            raise ConnectError(f"cannot listen on unix:{endpoint.address}: {exc.strerror}{hint}") from None
        sock.listen(128)
        return SocketListener(endpoint, sock, None)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        trusted = _trusted_server_uids(endpoint)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(cls._sockaddr(endpoint))
        except OSError as exc:
            sock.close()
            hint = ""
            if endpoint.address.startswith("@"):
                hint = (
                    " (abstract sockets belong to one network namespace: a server started "
                    "with `ip netns exec` is invisible outside it; use unix:///PATH instead)"
                )
            reason = exc.strerror or "timed out"
            raise ConnectError(f"no server at unix:{endpoint.address}: {reason}{hint}") from None
        pid, uid, gid = _peercred(sock)
        if uid not in trusted:
            sock.close()
            raise ConnectError(
                f"the socket unix:{endpoint.address} is served by {_user(uid)} (pid {pid}), not by "
                f"{_user(os.geteuid())} or root; a squatter? (if you trust it, add "
                f"?server_uid={uid} to the URL)")
        return SocketConnection(sock, f"unix {endpoint.address}", uid, gid)


def _trusted_server_uids(endpoint: Endpoint) -> frozenset[int]:
    """Who may serve a unix socket to us: our own uid, root, and ``?server_uid=N[,M]``."""
    raw = endpoint.params.get("server_uid", "")
    try:
        extra = {int(part) for part in raw.split(",") if part.strip()}
    except ValueError:
        raise ConnectError(f"server_uid takes uid numbers separated by commas, got {raw!r}") from None
    return frozenset({os.geteuid(), 0, *extra})
