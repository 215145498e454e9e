"""Shared-memory rings: ``shm:///NAME``, the lowest-latency transport.

Features
========
- Per client one POSIX shared-memory segment holding two single-producer,
  single-consumer byte rings (client→server, server→client) and their
  counters. A byte stream: no message boundaries, frames wrap around the ring
  end, a frame larger than the ring streams through it (``send`` waits for
  room, bounded by ``Connection.send_timeout`` without progress).
- No syscall on the hot path. The data path (copies, counters, barriers,
  the spin) is ``Rings`` in C (``_shmring.c``, ~0.1 us an operation, built at
  install when a compiler is there), or its pure-Python twin (``shmrings.py``,
  ~0.6 us); either side may use either. A reader that finds the ring empty
  spins for ``spin_us`` (the C rings without the GIL, with ``pause``), then
  says "asleep" in the segment and waits on a POSIX semaphore (``posix_ipc``
  releases the GIL); a writer posts it only when that flag is set. A writer
  waiting for room does the same on a second semaphore. Idle costs one timed
  wake-up per 0.25 s per waiting thread. Each side writes its CPU affinity
  into the segment; when both are pinned to the same single CPU nobody spins
  (the peer could not run meanwhile).
- Off the critical path: a reader hands consumed room back (publishes its
  tail, wakes a writer waiting for room) at the start of its next ``recv``,
  i.e. while the peer works on the message, unless it consumed more than a
  quarter ring (then at once); a writer re-reads the reader's tail only when
  its cached copy says the ring is full. Every counter and flag has its own
  cache lines, so the hot path touches a line the peer wrote only to see new
  data.
- Memory ordering: "publish a counter, then read the peer's asleep flag"
  against "set the asleep flag, then re-read the counter" (Dekker) needs a
  full barrier on both sides: a seq_cst fence in C, a ``threading.Lock``
  acquire/release in the Python twin, which also relies on x86-64 store
  ordering (shmrings.py says how). Other architectures are refused at
  listen/connect.
- Dead peers: every client keeps its rendezvous socket open; a waiting side
  polls it after each 0.25 s slice, so ``kill -9`` of the peer is
  ``Disconnected`` within ~0.3 s. An orderly ``close()`` sets a flag in the
  segment and posts every semaphore (waking the peer and this side's own
  threads blocked in ``recv``/``send``): the peer drains what is left, then
  reads ``b""``.
- Nothing is left behind: the client unlinks the segment and semaphore names
  as soon as it has opened them (the kernel frees the objects when both sides
  are gone, however they end); the server unlinks them at session close, and
  under ``ServerLock("shm", NAME)`` sweeps stale ``NAME.c*`` names at start.
- Crosses network namespaces (``/dev/shm`` is a file system, semaphores and
  the socket live there).

URL
===
``shm:///NAME[?ring=1048576&spin_us=50&mode=0600]``

- ``/dev/shm/NAME.sock`` — the rendezvous Unix socket (path, not abstract);
- per client ``/NAME.c<n>-<8 hex>.seg`` and the semaphores
  ``/NAME.c<n>-<8 hex>.{c2s,s2c}.{data,space}`` (``/dev/shm/sem.…``).

``ring`` (server side, bytes per direction, >= 4096) sizes the rings; the
client learns it from the server. ``spin_us`` (each side its own) bounds the
busy wait before sleeping: it must cover the peer's turnaround (a Ping costs
the gateway ~3 us, a kernel path-manager command ~40 us) or every round trip
pays two futex wake-ups (~30 us each here).

Handshake: the client connects to the socket; the server creates the segment
and semaphores and writes ``b"IPCGW-SHM 2 <id> <ring>\\n"`` (2: the segment
layout); the client opens them and unlinks the names. Nothing else travels on
the socket.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import platform
import re
import secrets
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import ClassVar

import posix_ipc

from ipcgw.errors import ConnectError, Disconnected, Timeout, TransportError
from ipcgw.transports.base import (
    Buffer,
    CloseOnce,
    Connection,
    Listener,
    ListenerClosed,
    ServerLock,
    Transport,
    call_holding_signals,
    deadline_after,
    remaining,
)
from ipcgw.transports.shmrings import rings_class
from ipcgw.url import Endpoint

__all__ = ["ShmConnection", "ShmListener", "ShmTransport"]

SHM_DIR = "/dev/shm"
DEFAULT_RING = 1 << 20
DEFAULT_SPIN_US = 50
SLICE = 0.25  # seconds between liveness checks while asleep
MAGIC = int.from_bytes(b"IPCGWSHM", "little")  # written last: the segment is initialised
HEADER = 4096
HELLO = re.compile(rb"IPCGW-SHM 2 (c\d{1,9}-[0-9a-f]{8}) (\d{4,12})\n")
SEM_KINDS = ("c2s.data", "c2s.space", "s2c.data", "s2c.space")
_PEERCRED = struct.Struct("3i")

# Word (8-byte) indexes in the header. Every counter and flag sits on its own
# 128-byte line (two cache lines: adjacent-line prefetch), so a side reads a
# line the other side writes only when it must: the head when the ring looks
# empty, the tail when the cached one says the ring is full, an "asleep" flag
# (which changes only around a sleep) after each publish.
W_MAGIC, W_RING, W_CLOSED, W_CPUS = 0, 1, 2, 4  # W_CLOSED/W_CPUS + 0 client, + 1 server
_LINE = 16  # words per 128 bytes


def _words(ring: int) -> tuple[int, int, int, int]:
    """(head, writer-asleep, tail, reader-asleep) word indexes of ring 0 (c2s) or 1 (s2c)."""
    base = (1 + 4 * ring) * _LINE
    return base, base + _LINE, base + 2 * _LINE, base + 3 * _LINE


def _sleep_on(sem: posix_ipc.Semaphore, seconds: float) -> None:
    """Wait for a post, ``seconds`` at most (a signal ends the wait early)."""
    with contextlib.suppress(posix_ipc.BusyError, posix_ipc.SignalError):
        call_holding_signals(sem.acquire, seconds)


def _check_platform() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64") or struct.calcsize("Q") != 8:
        raise TransportError(
            f"shm transport needs x86-64 store ordering (TSO); this is {platform.machine()}: "
            "use unix:// or fifo:// here")


def _name(endpoint: Endpoint) -> str:
    name = endpoint.address.strip("/")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}", name):
        raise ConnectError(f"shm URL takes one name of [A-Za-z0-9_.-]: shm:///NAME, got "
                           f"{endpoint.address!r}")
    return name


def _objects(name: str, cid: str) -> tuple[str, list[str]]:
    """POSIX names of a client's segment and semaphores (derivable, so sweepable)."""
    return f"/{name}.{cid}.seg", [f"/{name}.{cid}.{kind}" for kind in SEM_KINDS]


def _unlink(seg: str, sems: Sequence[str]) -> None:
    with contextlib.suppress(posix_ipc.ExistentialError, OSError):
        posix_ipc.unlink_shared_memory(seg)
    for sem in sems:
        with contextlib.suppress(posix_ipc.ExistentialError, OSError):
            posix_ipc.unlink_semaphore(sem)


def _sweep(name: str) -> None:
    """Unlink every per-client name under NAME: only call while holding the ServerLock."""
    pattern = re.compile(rf"(?:sem\.)?{re.escape(name)}\.(c\d+-[0-9a-f]{{8}})\..*")
    with contextlib.suppress(OSError):
        for cid in {m[1] for n in os.listdir(SHM_DIR) if (m := pattern.fullmatch(n))}:
            _unlink(*_objects(name, cid))


def _param(endpoint: Endpoint, key: str, default: int, low: int) -> int:
    try:
        value = int(endpoint.params.get(key, default))
    except ValueError:
        raise ConnectError(f"shm URL parameter {key} must be an integer") from None
    if value < low:
        raise ConnectError(f"shm URL parameter {key}={value} must be >= {low}")
    return value


def _cpu_mask() -> int:
    """Our allowed CPUs as a bit mask (bit 63 stands for every CPU >= 63); never 0."""
    return sum(1 << min(cpu, 63) for cpu in set(os.sched_getaffinity(0))) or 1 << 63


def _peer_pid(sock: socket.socket) -> int:
    with contextlib.suppress(OSError):
        return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    return 0


class ShmConnection(CloseOnce, Connection):
    """One side of a client's ring pair: the data path is ``Rings`` (C, or its
    Python twin, see shmrings.py); here are the waits, timeouts and closing.

    Sends are serialised by the caller (the channel holds a lock, as the
    Connection contract says).
    """

    def __init__(self, mm: mmap.mmap, sems: dict[str, posix_ipc.Semaphore], sock: socket.socket,
                 server: bool, spin_us: int, peer: str, names: tuple[str, list[str]] | None) -> None:
        self.peer = peer
        self._mm, self._sems, self._sock, self._names = mm, sems, sock, names
        self._q = memoryview(mm).cast("Q")
        ring = self._q[W_RING]
        out, inn = (1, 0) if server else (0, 1)
        oh, self._osleep_w, ot, osleep_r = _words(out)
        ih, isleep_w, it, self._isleep_r = _words(inn)
        o, i = ("s2c", "c2s") if server else ("c2s", "s2c")
        self._o_data, self._o_space = sems[f"{o}.data"], sems[f"{o}.space"]  # post / wait
        self._i_data, self._i_space = sems[f"{i}.data"], sems[f"{i}.space"]  # wait / post
        self._my_closed = W_CLOSED + int(server)
        self._peer_closed = W_CLOSED + 1 - int(server)
        chunk = max(4096, ring // 4)  # publish big writes in pieces: the reader overlaps
        self._rings = rings_class()(
            mm, HEADER + out * ring, HEADER + inn * ring, ring,
            (oh, ot, osleep_r, ih, it, isleep_w, self._peer_closed), chunk,
            self._o_data.release, self._i_space.release)
        self._put, self._get, self._fence = self._rings.put, self._rings.get, self._rings.fence
        self._spin_ns = spin_us * 1000
        self._mask = _cpu_mask()
        self._q[W_CPUS + int(server)] = self._mask
        self._peer_cpus = W_CPUS + 1 - int(server)
        self._spin_checked = False
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)  # the peer never writes: readable = gone
        CloseOnce.__init__(self)

    # ------------------------------------------------------------ receive

    def recv(self, timeout: float | None = None) -> bytes:
        users = self._users
        users.append(None)
        try:
            if self.closed:
                return b""
            data = self._get(self._spin_ns if self._spin_checked else self._spin_budget())
            return self._sleep_for_data(timeout) if data is None else data
        finally:
            users.pop()
            if self.closed and not users:
                self._release_once()

    def _sleep_for_data(self, timeout: float | None) -> bytes:
        """After the spin: data, or b"" at an orderly end (peer closed and drained,
        or we closed)."""
        q, get = self._q, self._get
        deadline = deadline_after(timeout)
        while True:
            q[self._isleep_r] = 1
            self._fence()  # the flag is seen before we re-check the head
            closed = q[self._peer_closed]
            data = get(0)
            if data is None and not closed and not self.closed:
                left = remaining(deadline)
                _sleep_on(self._i_data, SLICE if left is None else min(SLICE, left))
                closed = q[self._peer_closed]
                data = get(0)
            q[self._isleep_r] = 0
            if data is not None:
                return data
            if closed or self.closed:
                return b""
            self._check_peer()
            if deadline is not None and remaining(deadline) == 0.0:
                raise Timeout(f"nothing from {self.peer} within {timeout} s")

    def _spin_budget(self) -> int:
        """Spinning while the peer is pinned to our only CPU just delays it: don't.
        (Decided once the peer has written its CPU mask; until then, spin.)"""
        if not self._spin_checked and (peer := self._q[self._peer_cpus]):
            self._spin_checked = True
            both = peer | self._mask
            if both.bit_count() == 1 and both != 1 << 63:
                self._spin_ns = 0
        return self._spin_ns

    def _check_peer(self) -> None:
        if self._poll.poll(0):
            raise Disconnected(f"{self.peer} died (its rendezvous socket closed)")

    # ------------------------------------------------------------ send

    def send(self, data: Buffer) -> None:
        users = self._users
        users.append(None)
        try:
            if self.closed:  # first: after close the mapping may be gone
                raise Disconnected(f"connection to {self.peer} closed")
            done = self._put(data) if type(data) is bytes else 0
            if done != len(data):
                self._write(data, done)
        finally:
            users.pop()
            if self.closed and not users:
                self._release_once()

    def sendv(self, parts: Sequence[Buffer]) -> None:
        self._users.append(None)
        try:
            for part in parts:
                self._write(part)
        finally:
            self._leave()

    def _write(self, data: Buffer, done: int = 0) -> None:
        """The slow path: what ``put`` did not take at once (a full ring, a frame
        larger than a chunk), in pieces, waiting for room."""
        view = memoryview(data).cast("B")  # slices must not copy
        pos, n = max(done, 0), len(view)
        while pos < n or done < 0:
            if self.closed:
                raise Disconnected(f"connection to {self.peer} closed")
            done = self._put(view[pos:])
            if done < 0:
                raise Disconnected(f"{self.peer} closed the connection")
            if done == 0:
                self._wait_space()
            pos += done

    def _wait_space(self) -> None:
        """Until the reader frees room; Timeout after send_timeout without progress."""
        q, room = self._q, self._rings.room
        now = time.perf_counter_ns
        end = now() + self._spin_budget()
        while now() < end:
            if room():
                return
        deadline = deadline_after(self.send_timeout)
        while True:
            q[self._osleep_w] = 1
            self._fence()  # the flag is seen before we re-check the tail
            if not room() and not q[self._peer_closed] and not self.closed:
                left = remaining(deadline)
                _sleep_on(self._o_space, SLICE if left is None else min(SLICE, left))
            q[self._osleep_w] = 0
            if room() or q[self._peer_closed] or self.closed:
                return  # the caller re-checks closed flags
            self._check_peer()
            if deadline is not None and remaining(deadline) == 0.0:
                raise Timeout(f"{self.peer} did not read for {self.send_timeout} s")

    # ------------------------------------------------------------ close

    def _on_close(self) -> None:
        self._q[self._my_closed] = 1
        for sem in self._sems.values():  # wake the peer and our own blocked threads
            with contextlib.suppress(posix_ipc.Error):
                sem.release()
        if self._names:
            _unlink(*self._names)

    def _release(self) -> None:
        self._rings.release()
        self._q.release()
        self._mm.close()
        for sem in self._sems.values():
            with contextlib.suppress(posix_ipc.Error):
                sem.close()
        self._sock.close()


class ShmListener(CloseOnce, Listener):
    def __init__(self, endpoint: Endpoint) -> None:
        _check_platform()
        self.endpoint = endpoint
        self.name = _name(endpoint)
        self.ring = _param(endpoint, "ring", DEFAULT_RING, 4096)
        self.spin_us = _param(endpoint, "spin_us", DEFAULT_SPIN_US, 0)
        self.path = os.path.join(SHM_DIR, f"{self.name}.sock")
        self._ids = itertools.count(1)
        self._lock_file = ServerLock("shm", self.name)
        self._lock_file.acquire()
        CloseOnce.__init__(self)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            _sweep(self.name)  # we hold the lock: whatever is there is a dead server's
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._sock.bind(self.path)
            os.chmod(self.path, endpoint.mode)
            self._sock.listen(64)
            self._sock.setblocking(False)
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise TransportError(f"cannot listen on {self.path}: {exc}") from exc
            raise
        self._poll = select.poll()
        self._poll.register(self._wake, select.POLLIN)
        self._poll.register(self._sock, select.POLLIN)

    def accept(self) -> Connection:
        self._users.append(None)
        try:
            while not self.closed:
                self._poll.poll()
                if self.closed:
                    break
                try:
                    csock, _ = self._sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                try:
                    return self._session(csock)
                except (OSError, posix_ipc.Error):
                    csock.close()  # the client went away, or we ran out of shm: next one
            raise ListenerClosed(f"shm listener on {self.path} closed")
        finally:
            self._leave()

    def _session(self, csock: socket.socket) -> Connection:
        cid = f"c{next(self._ids)}-{secrets.token_hex(4)}"
        names = _objects(self.name, cid)
        ring, mode = self.ring, self.endpoint.mode
        sems: dict[str, posix_ipc.Semaphore] = {}
        mm: mmap.mmap | None = None
        try:
            shm = posix_ipc.SharedMemory(names[0], posix_ipc.O_CREX, mode, HEADER + 2 * ring)
            try:
                mm = mmap.mmap(shm.fd, HEADER + 2 * ring)
            finally:
                shm.close_fd()
            with memoryview(mm).cast("Q") as q:
                q[W_RING] = ring
                q[W_MAGIC] = MAGIC
            for kind, sem in zip(SEM_KINDS, names[1], strict=True):
                sems[kind] = posix_ipc.Semaphore(sem, posix_ipc.O_CREX, mode, 0)
            csock.setblocking(False)
            csock.send(f"IPCGW-SHM 2 {cid} {ring}\n".encode())  # fresh socket: always fits
        except BaseException:
            _unlink(*names)
            for sem in sems.values():
                sem.close()
            if mm is not None:
                mm.close()
            raise
        pid = _peer_pid(csock)
        return ShmConnection(mm, sems, csock, True, self.spin_us, f"shm client pid {pid}", names)

    def _on_close(self) -> None:
        os.eventfd_write(self._wake, 1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # ours: we hold the ServerLock until just below
        # No sweep here: accepted sessions own their names (unlinked by the client once
        # opened, by the server session at close); a new server sweeps after a crash.
        self._lock_file.release()

    def _release(self) -> None:
        self._sock.close()
        os.close(self._wake)


class ShmTransport(Transport):
    scheme: ClassVar[str] = "shm"
    crosses_netns: ClassVar[bool] = True
    message_boundaries: ClassVar[bool] = False
    max_message_size: ClassVar[int | None] = None

    @classmethod
    def listen(cls, endpoint: Endpoint) -> Listener:
        return ShmListener(endpoint)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        _check_platform()
        name = _name(endpoint)
        spin_us = _param(endpoint, "spin_us", DEFAULT_SPIN_US, 0)
        path = os.path.join(SHM_DIR, f"{name}.sock")
        deadline = deadline_after(timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            return _connect(sock, name, path, spin_us, deadline, timeout)
        except BaseException:
            sock.close()
            raise


def _connect(sock: socket.socket, name: str, path: str, spin_us: int,
             deadline: float | None, timeout: float) -> Connection:
    try:
        sock.settimeout(remaining(deadline))
        sock.connect(path)
        line = b""
        while not line.endswith(b"\n") and len(line) < 128:
            sock.settimeout(max(remaining(deadline) or 0.0, 0.001))
            chunk = sock.recv(128 - len(line))
            if not chunk:
                raise ConnectError(f"shm server {name} closed the rendezvous (refused or dying)")
            line += chunk
    except (FileNotFoundError, NotADirectoryError):
        raise ConnectError(f"no ipcgw shm server named {name} ({path} missing)") from None
    except ConnectionRefusedError:
        raise ConnectError(f"shm server {name} is dead ({path} refuses; a new server "
                           "reclaims it)") from None
    except TimeoutError:
        raise ConnectError(f"shm server {name} did not answer within {timeout} s") from None
    except OSError as exc:
        raise ConnectError(f"shm connect to {name}: {exc}") from exc
    m = HELLO.fullmatch(line)
    if not m:
        raise ConnectError(f"{path} is not an ipcgw shm server (said {line[:40]!r})")
    cid, ring = m[1].decode(), int(m[2])
    names = _objects(name, cid)
    sems: dict[str, posix_ipc.Semaphore] = {}
    mm: mmap.mmap | None = None
    try:
        shm = posix_ipc.SharedMemory(names[0])
        try:
            if shm.size != HEADER + 2 * ring:
                raise ConnectError(f"shm segment {names[0]} has the wrong size")
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        for kind, sem in zip(SEM_KINDS, names[1], strict=True):
            sems[kind] = posix_ipc.Semaphore(sem)
        with memoryview(mm).cast("Q") as q:
            ok = q[W_MAGIC] == MAGIC and q[W_RING] == ring
        if not ok:
            raise ConnectError(f"shm segment {names[0]} is not initialised")
    except BaseException as exc:
        for s in sems.values():
            s.close()
        if mm is not None:
            mm.close()
        if isinstance(exc, posix_ipc.Error):
            raise ConnectError(f"shm server {name}: cannot open {cid}: {exc}") from None
        raise
    finally:
        _unlink(*names)  # from now on the kernel frees them when both sides are gone
    pid = _peer_pid(sock)
    sock.setblocking(False)
    return ShmConnection(mm, sems, sock, False, spin_us, f"shm server {name} pid {pid}", None)
