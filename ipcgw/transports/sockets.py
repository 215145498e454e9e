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
    path socket for that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Sequence
from typing import ClassVar

from ipcgw.errors import ConnectError, Disconnected, Timeout
from ipcgw.transports.base import (
    Buffer,
    Connection,
    Listener,
    ListenerClosed,
    Transport,
    is_disconnect,
)
from ipcgw.url import Endpoint

__all__ = ["TcpTransport", "UnixTransport"]

_RECV_SIZE = 256 * 1024


_TIMEVAL = struct.Struct("ll")
# A kernel receive timeout within this fraction of the one asked for is kept:
# re-setting it on every call would cost a syscall per message.
_SLACK = 0.05


class SocketConnection(Connection):
    """Blocking socket with its timeouts kept in the kernel (SO_RCVTIMEO /
    SO_SNDTIMEO): Python's own socket timeouts add a poll() before every call."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)
        self._rcvtimeo: float | None = None  # None: wait forever
        self._send_timeout: float | None = None
        sock.settimeout(None)

    @property  # type: ignore[override]
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
        try:
            if timeout is not None and timeout <= 0:
                n = self.sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            else:
                current = self._rcvtimeo
                if timeout != current and (timeout is None or current is None
                                           or abs(timeout - current) > _SLACK * timeout):
                    self._kernel_timeout(socket.SO_RCVTIMEO, timeout)
                    self._rcvtimeo = timeout
                n = self.sock.recv_into(self._buf)
        except BlockingIOError:  # SO_RCVTIMEO passed, or nothing there for timeout 0
            raise Timeout(f"nothing from {self.peer} within {timeout} s") from None
        except OSError as exc:
            if is_disconnect(exc):
                return b""
            raise Disconnected(f"{self.peer}: {exc.strerror}") from None
        return bytes(self._view[:n])

    def close(self) -> None:
        # shutdown wakes a recv blocked in another thread; close alone would not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class SocketListener(Listener):
    def __init__(self, endpoint: Endpoint, sock: socket.socket, path: str | None) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self._path = path
        self._closed = False

    def accept(self) -> Connection:
        try:
            sock, addr = self.sock.accept()
        except OSError:
            if self._closed:
                raise ListenerClosed("listener closed") from None
            raise
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"tcp {addr[0]}:{addr[1]}"
        else:
            peer = f"unix pid {_peer_pid(sock)}"
        return SocketConnection(sock, peer)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() in another thread
        self.sock.close()
        if self._path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None


def _peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


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
        path = None if addr.startswith("\0") else addr
        if path:
            _reclaim_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~endpoint.mode)
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot listen on {endpoint.address}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        sock.listen(128)
        return SocketListener(endpoint, sock, path)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
        return SocketConnection(sock, f"unix {endpoint.address}")


def _reclaim_stale_socket(path: str) -> None:
    """Remove a socket file whose server died; refuse if a server answers on it."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ConnectError(f"{path} exists and is not a socket; refusing to replace it")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: nobody listens
        return
    finally:
        probe.close()
    raise ConnectError(f"a live server already listens on {path}")
