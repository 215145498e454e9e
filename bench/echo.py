"""Child side of the raw-Python and peer references: ``python -m ipcgw_bench.echo KIND MODE SIZE ARGS``.

Kept free of ipcgw imports, so its start-up and its loop cost only what the
mechanism itself costs. The protocol (shared with bench/c/common.h): send
one ready message, then either echo SIZE-byte messages (``pp``) or count
received bytes (``tp``) until the end marker (EOF on streams and on the shm
rings, a zero-length message on queues and message sockets), then answer the
count in 8 bytes.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

__all__ = ["main"]

READY = b"R"


def _ack(total: int) -> bytes:
    return total.to_bytes(8, "little")


def _stream(rfd_read: Callable[[memoryview], int], write: Callable[[bytes | memoryview], None],
            mode: str, size: int) -> None:
    """Exact reads into one buffer, no copies beyond the one the echo must send."""
    buf = bytearray(max(size, 1 << 20))
    view = memoryview(buf)
    write(READY)
    total = 0
    if mode == "pp":
        msg = view[:size]
        while True:
            got = 0
            while got < size:
                n = rfd_read(view[got:size])
                if not n:
                    break
                got += n
            if got < size:
                break
            write(msg)
            total += size
    else:
        while n := rfd_read(view):
            total += n
    write(_ack(total))


def _socket_fd(fd: int, mode: str, size: int) -> None:
    sock = socket.socket(fileno=fd)
    _stream(sock.recv_into, sock.sendall, mode, size)


def _tcp(port: str, mode: str, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _stream(sock.recv_into, sock.sendall, mode, size)


def _fifo(c2s: str, s2c: str, mode: str, size: int) -> None:
    rfd = os.open(c2s, os.O_RDONLY)  # same open order as the client: c2s, then s2c
    wfd = os.open(s2c, os.O_WRONLY)

    def write(data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view):]

    _stream(lambda v: os.readv(rfd, (v,)), write, mode, size)


def _shm(spin_us: str, objs: list[str], mode: str, size: int) -> None:
    """The shm rings are a byte stream: the stream loop runs on them unchanged.
    A blocked wait gives up when our parent (the bench) is gone."""
    from .shmring import ShmEnd

    parent = os.getppid()
    end = ShmEnd(objs, server=True, spin_us=int(spin_us), alive=lambda: os.getppid() == parent)
    try:
        _stream(end.read_into, end.write, mode, size)
    finally:
        end.close()


def _queue(kind: str, c2s: str, s2c: str, mode: str, size: int) -> None:
    if kind == "sysv":
        import sysv_ipc

        from .queues import sysv_msgmax

        chunk = sysv_msgmax()
        rq = sysv_ipc.MessageQueue(int(c2s), max_message_size=chunk)
        wq = sysv_ipc.MessageQueue(int(s2c), max_message_size=chunk)

        def send(data: bytes) -> None:
            wq.send(data, type=1)

        def recv() -> bytes | None:
            data, mtype = rq.receive()
            return None if mtype == 2 else data
    else:
        import posix_ipc

        rq, wq = posix_ipc.MessageQueue(c2s), posix_ipc.MessageQueue(s2c)
        chunk = wq.max_message_size

        def send(data: bytes) -> None:
            wq.send(data)

        def recv() -> bytes | None:
            return rq.receive()[0] or None

    send(READY)
    total = 0
    if mode == "pp":
        nchunks = -(-size // chunk)
        while True:
            parts = []
            for _ in range(nchunks):
                part = recv()
                if part is None:
                    break
                parts.append(part)
            if len(parts) < nchunks:
                break
            for part in parts:
                send(part)
            total += size
    else:
        while (part := recv()) is not None:
            total += len(part)
    send(_ack(total))


def _zmq(endpoint: str, mode: str, size: int) -> None:
    import zmq

    ctx = zmq.Context(1)
    try:
        if mode == "pp":  # REQ/REP as ns3-gym uses it: the REP side echoes
            sock = ctx.socket(zmq.REP)
            sock.connect(endpoint)
            while True:
                msg = sock.recv()
                sock.send(msg)
                if not msg:
                    break
        else:
            sock = ctx.socket(zmq.PAIR)
            sock.connect(endpoint)
            sock.send(READY)
            total = 0
            while msg := sock.recv():
                total += len(msg)
            sock.send(_ack(total))
        sock.close(linger=2000)
    finally:
        ctx.term()


def _mp_pipe(fd: int, mode: str, size: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    conn.send_bytes(READY)
    total = 0
    if mode == "pp":
        while msg := conn.recv_bytes():
            conn.send_bytes(msg)
            total += len(msg)
    else:
        while msg := conn.recv_bytes():
            total += len(msg)
    conn.send_bytes(_ack(total))


def main(argv: list[str]) -> int:
    kind, mode, size, args = argv[0], argv[1], int(argv[2]), argv[3:]
    try:
        if kind == "unix":
            _socket_fd(int(args[0]), mode, size)
        elif kind == "tcp":
            _tcp(args[0], mode, size)
        elif kind == "fifo":
            _fifo(args[0], args[1], mode, size)
        elif kind == "shm":
            _shm(args[0], args[1:], mode, size)
        elif kind in ("sysv", "posixmq"):
            _queue(kind, args[0], args[1], mode, size)
        elif kind in ("zmq-ipc", "zmq-tcp"):
            _zmq(args[0], mode, size)
        elif kind == "mp-pipe":
            _mp_pipe(int(args[0]), mode, size)
        else:
            print(f"unknown kind {kind}", file=sys.stderr)
            return 2
    except (BrokenPipeError, ConnectionResetError, EOFError, KeyboardInterrupt):
        return 1  # the bench gave up on us; it reports why
    except Exception as exc:  # queue removed under us, etc.
        print(f"echo {kind} {mode}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
