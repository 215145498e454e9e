"""Client side of the in-run references: raw Python per transport, and the peers
people use instead (ZeroMQ REQ/REP as ns3-gym, ``multiprocessing.Pipe``).

A reference answers "what would the same syscalls cost without ipcgw's
layers?": no framing, no codec, no locks, exact reads into one buffer. Each
``Ref`` owns its echo child (``bench/echo.py``, pinned to the server CPU) and
every OS object it made; ``close()`` kills and removes them, also after a
failure. A case watchdog removes queues / kills the child if a blocking call
outlives the case, so a dead echo cannot hang the whole run.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ipcgw.transports import TRANSPORTS

from .queues import QueuePair, sysv_msgmax

__all__ = ["PEER_KINDS", "RAW_TRANSPORTS", "Ref", "SkipCase", "make_ref"]

PEER_KINDS = ("zmq-ipc", "zmq-tcp", "mp-pipe")


class SkipCase(Exception):
    """The reference cannot run here (a missing optional package); the note says why."""


def _pin_to(cpu: int) -> Any:
    return lambda: os.sched_setaffinity(0, {cpu})


class Ref:
    """One reference case: ``start()``, then ``rtt``/``send`` loops, ``finish()``, ``close()``."""

    kind: ClassVar[str] = "raw"
    # Per class, except ZmqRef: one class for both its transports, named per instance.
    transport: str = ""
    child_kind: str = ""

    def __init__(self, mode: str, size: int, server_cpu: int, timeout: float) -> None:
        self.mode, self.size, self.server_cpu, self.timeout = mode, size, server_cpu, timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._watchdog: threading.Thread | None = None
        self._ending = False  # finish() sent the end marker: the echo may exit now
        self._closing = False
        self._stack = contextlib.ExitStack()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, args: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "ipcgw_bench.echo", self.child_kind or self.transport, self.mode,
             str(self.size), *args],
            pass_fds=pass_fds, preexec_fn=_pin_to(self.server_cpu),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._watchdog = threading.Thread(target=self._watch, name="bench-ref-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        """Unblock the client when the echo dies early or the case outlives its timeout:
        kill the echo and remove what a blocked call waits on (queues have no EOF)."""
        assert self.proc is not None
        try:
            self.proc.wait(self.timeout)
            if self._ending:
                return  # exiting after its ack is what the echo should do
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                self.proc.kill()
        if not self._closing:
            self._unblock()

    def _unblock(self) -> None:
        """Transport-specific: make a blocked rtt/send/finish fail."""

    def child_error(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace").strip()[-300:]

    def start(self) -> None:
        raise NotImplementedError

    def rtt(self, payload: bytes) -> None:
        raise NotImplementedError

    def send(self, payload: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> int:
        """End marker, then the byte count the echo saw."""
        raise NotImplementedError

    def close(self) -> None:
        self._closing = True
        try:
            self._stack.close()
        finally:
            if self.proc is not None:
                if self.proc.poll() is None:
                    try:
                        self.proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
                if self._watchdog is not None:
                    self._watchdog.join()
                if self.proc.stderr is not None:
                    self.proc.stderr.close()

    def __enter__(self) -> Ref:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- streams


class _StreamRef(Ref):
    """Sockets, FIFOs and the shm rings: write all, then exact reads into a reusable buffer."""

    # Bound by start(): the transport's read-into (0 at EOF) and write-all.
    _read: Callable[[memoryview], int]
    _write: Callable[[bytes], None]

    def _init_buffers(self) -> None:
        self._buf = bytearray(max(self.size, 8))
        self._view = memoryview(self._buf)

    def _read_exact(self, n: int) -> None:
        view, read, got = self._view, self._read, 0
        while got < n:
            k = read(view[got:n])
            if not k:
                raise EOFError(f"echo closed the {self.transport} stream {self.child_error()}")
            got += k

    def rtt(self, payload: bytes) -> None:
        self._write(payload)
        self._read_exact(self.size)

    def send(self, payload: bytes) -> None:
        self._write(payload)

    def finish(self) -> int:
        self._ending = True
        self._end()
        self._read_exact(8)
        return int.from_bytes(self._buf[:8], "little")

    def _end(self) -> None:
        """Send the end marker (EOF, for a stream)."""
        raise NotImplementedError


class _SocketRef(_StreamRef):
    sock: socket.socket

    def _setup_socket(self, sock: socket.socket) -> None:
        self.sock = sock
        self._stack.callback(sock.close)
        self._read = sock.recv_into
        self._write = sock.sendall
        self._init_buffers()
        self._read_exact(1)  # ready

    def _end(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def _unblock(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.sock.shutdown(socket.SHUT_RDWR)


class RawUnix(_SocketRef):
    """``socketpair(AF_UNIX, SOCK_STREAM)``: the data path of a connected unix socket."""

    transport = "unix"

    def start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._spawn([str(theirs.fileno())], pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self._setup_socket(mine)


class RawTcp(_SocketRef):
    transport = "tcp"

    def start(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            lsock.settimeout(self.timeout)
            self._spawn([str(lsock.getsockname()[1])])
            sock, _ = lsock.accept()
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._setup_socket(sock)


class RawFifo(_StreamRef):
    """Two FIFOs grown to 1 MiB (as ipcgw's fifo transport grows them), unlinked once open."""

    transport = "fifo"

    def start(self) -> None:
        import fcntl

        tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="ipcgw-bench-"))
        c2s, s2c = os.path.join(tmp, "c2s"), os.path.join(tmp, "s2c")
        os.mkfifo(c2s, 0o600)
        os.mkfifo(s2c, 0o600)
        self._spawn([c2s, s2c])
        # Non-blocking opens with a deadline, so an echo that never starts cannot hang us.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                wfd = os.open(c2s, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError:  # ENXIO: no reader yet
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise RuntimeError(f"fifo echo did not open: {self.child_error()}") from None
                time.sleep(0.002)
        self._wfd = wfd
        self._stack.callback(self._close_w)
        rfd = os.open(s2c, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._stack.callback(os.close, rfd)
        for fd in (rfd, wfd):
            os.set_blocking(fd, True)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        if not poller.poll(int(self.timeout * 1000)):
            raise RuntimeError("fifo echo not ready in time")
        self._read = lambda v: os.readv(rfd, (v,))
        self._write = self._write_all
        self._init_buffers()
        self._read_exact(1)
        os.unlink(c2s)
        os.unlink(s2c)

    def _write_all(self, data: bytes) -> None:
        n = os.write(self._wfd, data)
        if n < len(data):
            view = memoryview(data)[n:]
            while view:
                view = view[os.write(self._wfd, view):]

    def _close_w(self) -> None:
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1

    def _end(self) -> None:
        self._close_w()  # EOF is the end marker


class RawShm(_StreamRef):
    """ipcgw's own shm rings (``bench/shmring.py``: the C ``Rings``, layout 3, memfd
    and eventfds handed to the echo by fd) without its framing, codec, channel and
    close protocol. Nothing is named, so nothing can be left behind."""

    transport = "shm"

    def start(self) -> None:
        from . import shmring

        fds = shmring.create()
        try:
            # As ipcgw's transport: no spinning when both sides share the only CPU.
            spin = 0 if os.sched_getaffinity(0) == {self.server_cpu} else shmring.SPIN_US
            self._spawn([str(spin), *map(str, fds)], pass_fds=tuple(fds))
            self.end = shmring.ShmEnd(fds, server=False, spin_us=spin)  # owns the fds now
        except BaseException:
            shmring.close_fds(fds)
            raise
        self._stack.callback(self.end.close)
        self._read = self.end.read_into
        self._write = self.end.write
        self._init_buffers()
        self._read_exact(1)  # ready: the echo has mapped the segment

    def _end(self) -> None:
        self.end.end()

    def _unblock(self) -> None:
        with contextlib.suppress(AttributeError):
            self.end.abort()


# ---------------------------------------------------------------- queues


class _QueueRef(Ref):
    # Bound by _bind(): the largest message, and one message each way.
    chunk: int
    _send_one: Callable[[bytes], None]
    _recv_one: Callable[[], bytes]

    def start(self) -> None:
        self.pair = self._stack.enter_context(QueuePair(self.transport))
        self._spawn(self.pair.py_args())
        self._bind()
        self._recv_one()  # ready
        self.pair.unlink_names()
        self._chunks: list[bytes] = []

    def _split(self, payload: bytes) -> list[bytes]:
        if not self._chunks or sum(map(len, self._chunks)) != len(payload):
            step = self.chunk
            self._chunks = [payload[i : i + step] for i in range(0, len(payload), step)]
        return self._chunks

    def _bind(self) -> None:
        """Set chunk, _send_one and _recv_one for this queue pair."""
        raise NotImplementedError

    def rtt(self, payload: bytes) -> None:
        chunks = self._split(payload)
        send, recv = self._send_one, self._recv_one
        for c in chunks:
            send(c)
        for _ in chunks:
            recv()

    def send(self, payload: bytes) -> None:
        for c in self._split(payload):
            self._send_one(c)

    def _unblock(self) -> None:
        self.pair.close()


class RawSysv(_QueueRef):
    transport = "sysv"
    _end: Callable[[], None]  # the end marker: an empty message of type 2

    def _bind(self) -> None:
        wq, rq = self.pair.queues
        self.chunk = sysv_msgmax()
        send, receive = wq.send, rq.receive  # type: ignore[attr-defined]
        self._send_one = lambda data: send(data, True, 1)
        self._recv_one = lambda: receive()[0]
        self._end = lambda: send(b"", True, 2)

    def finish(self) -> int:
        self._ending = True
        self._end()
        return int.from_bytes(self._recv_one(), "little")


class RawPosixMq(_QueueRef):
    transport = "posixmq"

    def _bind(self) -> None:
        wq, rq = self.pair.queues
        self.chunk = wq.max_message_size  # type: ignore[attr-defined]
        send, receive, timeout = wq.send, rq.receive, self.timeout  # type: ignore[attr-defined]
        self._send_one = lambda data: send(data, timeout)
        self._recv_one = lambda: receive(timeout)[0]

    def finish(self) -> int:
        self._ending = True
        self._send_one(b"")
        return int.from_bytes(self._recv_one(), "little")


# ---------------------------------------------------------------- peers


class ZmqRef(Ref):
    """ZeroMQ: REQ/REP for round trips (what ns3-gym does), PAIR for one-way streams."""

    kind = "peer"

    def __init__(self, transport: str, *args: Any) -> None:
        super().__init__(*args)
        self.child_kind = transport
        self.transport = transport

    def start(self) -> None:
        try:
            import zmq
        except ImportError:
            raise SkipCase("pyzmq not installed (pip install 'ipcgw[bench]')") from None
        self.zmq = zmq
        self.ctx = zmq.Context(1)  # after pin_self: its I/O thread inherits the client CPU
        self._stack.callback(self.ctx.destroy, 0)
        sock = self.ctx.socket(zmq.REQ if self.mode == "pp" else zmq.PAIR)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
        sock.setsockopt(zmq.LINGER, 0)
        if self.transport == "zmq-ipc":
            tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="ipcgw-bench-"))
            endpoint = f"ipc://{tmp}/zmq.sock"
            sock.bind(endpoint)
        else:
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            endpoint = f"tcp://127.0.0.1:{port}"
        self.sock = sock
        self._spawn([endpoint])
        if self.mode != "pp":
            sock.recv()  # ready

    def rtt(self, payload: bytes) -> None:
        self.sock.send(payload)
        self.sock.recv()

    def send(self, payload: bytes) -> None:
        self.sock.send(payload)

    def finish(self) -> int:
        self._ending = True
        if self.mode == "pp":
            self.sock.send(b"")
            return len(self.sock.recv())
        self.sock.send(b"")
        return int.from_bytes(self.sock.recv(), "little")


class MpPipeRef(Ref):
    """``multiprocessing.Pipe()`` is a socketpair wrapped in ``Connection``: built the same way."""

    kind = "peer"
    transport = "mp-pipe"

    def start(self) -> None:
        from multiprocessing.connection import Connection

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._spawn([str(theirs.fileno())], pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.sock = mine
        self.conn = Connection(mine.detach())
        self._stack.callback(self.conn.close)
        if not self.conn.poll(self.timeout):
            raise RuntimeError("mp-pipe echo not ready in time")
        self.conn.recv_bytes()

    def rtt(self, payload: bytes) -> None:
        self.conn.send_bytes(payload)
        self.conn.recv_bytes()

    def send(self, payload: bytes) -> None:
        self.conn.send_bytes(payload)

    def finish(self) -> int:
        self._ending = True
        self.conn.send_bytes(b"")
        return int.from_bytes(self.conn.recv_bytes(), "little")


_RAW: dict[str, type[Ref]] = {"unix": RawUnix, "tcp": RawTcp, "fifo": RawFifo, "sysv": RawSysv,
                              "posixmq": RawPosixMq, "shm": RawShm}
#: The transports with a raw-Python reference above; a new transport has none until written.
RAW_TRANSPORTS = tuple(t for t in TRANSPORTS if t in _RAW)


def make_ref(kind: str, transport: str, mode: str, size: int, server_cpu: int,
             timeout: float) -> Ref:
    if kind == "raw":
        return _RAW[transport](mode, size, server_cpu, timeout)
    if transport in ("zmq-ipc", "zmq-tcp"):
        return ZmqRef(transport, mode, size, server_cpu, timeout)
    if transport == "mp-pipe":
        return MpPipeRef(mode, size, server_cpu, timeout)
    raise ValueError(f"unknown reference {kind} {transport}")
