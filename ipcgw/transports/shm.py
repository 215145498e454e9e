"""Shared-memory rings: ``shm:///NAME``, the lowest-latency transport.

Features
========
- Per client one shared-memory segment (a sealed ``memfd``: it cannot be
  shrunk or grown, so no peer can make the other's accesses fault) holding two
  single-producer, single-consumer byte rings (client→server, server→client)
  and their counters. A byte stream: no message boundaries, frames wrap
  around the ring end, a frame larger than the ring streams through it
  (``send`` waits for room, bounded by ``Connection.send_timeout`` without
  progress).
- No syscall on the hot path. The data path (copies, counters, barriers,
  the spin) is ``Rings`` in C (``_shmring.c``, ~0.1 us an operation, built at
  install when a compiler is there), or its pure-Python twin (``shmrings.py``,
  ~0.6 us); either side may use either. A reader that finds the ring empty
  spins for ``spin_us`` (the C rings without the GIL, with ``pause``), then
  says "asleep" in the segment and waits on an ``eventfd`` (``poll``, without
  the GIL); a writer writes it only when that flag is set. A writer waiting
  for room does the same on a second eventfd. Idle costs one timed
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
- Untrusted peer: whatever it stores into the segment, ring counters are
  bounded by the ring size before use (``RingCorrupted``, a TransportError,
  ends that session only), the geometry is the server's own, flags are only
  tested for zero. The segment and eventfds have no names: they travel to the
  one peer over the rendezvous socket (``SCM_RIGHTS``), so nobody can pre-create,
  open or replace them. Server-side connections carry the peer's uid/gid
  (``SO_PEERCRED`` of the rendezvous socket).
- Dead peers: every client keeps its rendezvous socket open; a waiting side
  polls it after each 0.25 s slice, so ``kill -9`` of the peer is
  ``Disconnected`` within ~0.3 s. An orderly ``close()`` sets a flag in the
  segment and posts every eventfd (waking the peer and this side's own
  threads blocked in ``recv``/``send``): the peer drains what is left, then
  reads ``b""``.
- Nothing is left behind but a ``kill -9``-ed server's socket name (the next
  server reclaims it under ``ServerLock("shm", NAME)``, and also sweeps the
  per-client names layout 2 used to leave, when they are its own uid's). The
  listener checks every second that ``NAME.sock`` is still its socket: removed
  or replaced (by a file of its uid), it binds it again and logs one line.
- Crosses network namespaces (``/dev/shm`` is a file system the socket lives
  in; fds pass over it).

URL
===
``shm:///NAME[?ring=1048576&spin_us=50&mode=0600]``

- ``/dev/shm/NAME.sock`` — the rendezvous Unix socket (path, not abstract);
  ``mode`` is its mode (who may connect).

``ring`` (server side, bytes per direction, >= 4096) sizes the rings; the
client learns it from the server. ``spin_us`` (each side its own) bounds the
busy wait before sleeping: it must cover the peer's turnaround (a Ping costs
the gateway ~3 us, a kernel path-manager command ~40 us) or every round trip
pays two sleep/wake-ups (an eventfd write and a poll, ~30 us each here).
The spin adapts: a reader whose data came long after its spin gave up halves
its next spin (down to none), and spins fully again once data comes within
``spin_us`` of its going to sleep. So a steady round-trip stream keeps the
full spin and a peer that writes 100 times a second costs no spinning.

Handshake: the client connects to the socket; the server creates the segment
and four eventfds (``{c2s,s2c}.{data,space}``) and sends
``b"IPCGW-SHM 3 <id> <ring>\\n"`` (3: the layout) with their fds; the client
checks the segment's seals and size. Nothing else travels on the socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import logging
import math
import mmap
import os
import platform
import re
import secrets
import select
import socket
import stat
import struct
import time
from collections.abc import Callable, Sequence
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
from ipcgw.transports.shmrings import rings_class
from ipcgw.url import Endpoint

__all__ = ["ShmConnection", "ShmListener", "ShmTransport"]

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
DEFAULT_RING = 1 << 20
DEFAULT_SPIN_US = 50
SLICE = 0.25  # seconds between liveness checks while asleep
MAGIC = int.from_bytes(b"IPCGWSHM", "little")  # written last: the segment is initialised
HEADER = 4096
LAYOUT = 3
HELLO = re.compile(rb"IPCGW-SHM (\d{1,3}) (c\d{1,9}-[0-9a-f]{8}) (\d{4,12})\n")
EVENT_KINDS = ("c2s.data", "c2s.space", "s2c.data", "s2c.space")
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
HEAL_EVERY = 1.0  # seconds between checks that NAME.sock is still our socket
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


def _sleep_on(waiter: select.poll, fd: int, seconds: float) -> None:
    """Wait for a post on eventfd ``fd`` (registered in ``waiter``), ``seconds`` at most;
    consume it. A signal handler's exception comes out of ``poll`` (PEP 475)."""
    if waiter.poll(math.ceil(seconds * 1000)):
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(fd)


def _poster(fd: int) -> Callable[[], None]:
    """Post eventfd ``fd``. The peer can read or fill the counter too: a full one
    (EAGAIN) already means "posted", and a wait never relies on a post alone (slices)."""
    write = functools.partial(os.eventfd_write, fd, 1)

    def post() -> None:
        with contextlib.suppress(OSError):
            write()
    return post


#: The longest one-off spin for an expected reply: a kernel path-manager command
#: through the gateway turns around in 20-250 us (bench --pm); past that, sleep.
MAX_REPLY_SPIN_NS = 250_000

#: Below this an adaptive spin is not worth its clock reads: stop spinning.
_SPIN_MIN_NS = 2_000


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


def _sweep(name: str) -> None:
    """Unlink the per-client names layout 2 left under NAME (``NAME.c<n>-<hex>.seg``,
    ``sem.NAME.c<n>-<hex>.*``), only those of our own uid: call holding the ServerLock."""
    pattern = re.compile(rf"(?:sem\.)?{re.escape(name)}\.c\d+-[0-9a-f]{{8}}\..*")
    with contextlib.suppress(OSError):
        for entry in os.scandir(SHM_DIR):
            with contextlib.suppress(OSError):
                if pattern.fullmatch(entry.name) and entry.stat(follow_symlinks=False).st_uid == os.geteuid():
                    os.unlink(entry.path)


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


def _peer_cred(sock: socket.socket) -> tuple[int, int | None, int | None]:
    """(pid, uid, gid) of the process at the other end, as the kernel says (pid 0 and
    None when it cannot)."""
    with contextlib.suppress(OSError):
        pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid, uid, gid
    return 0, None, None


def _inode(path: str) -> tuple[int, int]:
    """(device, inode) at ``path``, (0, 0) when nothing is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    return st.st_dev, st.st_ino


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class ShmConnection(CloseOnce, Connection):
    """One side of a client's ring pair: the data path is ``Rings`` (C, or its
    Python twin, see shmrings.py); here are the waits, timeouts and closing.

    Sends are serialised by the caller (the channel holds a lock, as the
    Connection contract says).
    """

    def __init__(self, mm: mmap.mmap, ring: int, events: dict[str, int], sock: socket.socket,
                 server: bool, spin_us: int, peer: str) -> None:
        """Takes ownership of ``mm``, the eventfds and ``sock``. ``ring`` is the
        geometry this side decided or checked: the header's copy is the peer's to
        overwrite, so it is never read again."""
        self.peer = peer
        self._mm, self._events, self._sock = mm, events, sock
        self._q = memoryview(mm).cast("Q")
        out, inn = (1, 0) if server else (0, 1)
        oh, self._osleep_w, ot, osleep_r = _words(out)
        ih, isleep_w, it, self._isleep_r = _words(inn)
        o, i = ("s2c", "c2s") if server else ("c2s", "s2c")
        self._i_data, self._o_space = events[f"{i}.data"], events[f"{o}.space"]  # we wait on these
        self._data_waiter, self._space_waiter = select.poll(), select.poll()
        self._data_waiter.register(self._i_data, select.POLLIN)
        self._space_waiter.register(self._o_space, select.POLLIN)
        self._my_closed = W_CLOSED + int(server)
        self._peer_closed = W_CLOSED + 1 - int(server)
        chunk = max(4096, ring // 4)  # publish big writes in pieces: the reader overlaps
        self._rings = rings_class()(
            mm, HEADER + out * ring, HEADER + inn * ring, ring,
            (oh, ot, osleep_r, ih, it, isleep_w, self._peer_closed), chunk,
            _poster(events[f"{o}.data"]), _poster(events[f"{i}.space"]))
        self._put, self._get_into, self._fence = self._rings.put, self._rings.get_into, self._rings.fence
        self._rxview = memoryview(bytearray(chunk))  # for recv(); the channel reads into its own
        self._spin_max = spin_us * 1000  # what the URL allows; 0 when pinned with the peer
        self._spin_ns = self._spin_max  # a reader's spin now: adapts to the peer's pace
        self._spin_once = 0  # one longer spin for a reply that takes the peer a while
        self._mask = _cpu_mask()
        self._q[W_CPUS + int(server)] = self._mask
        self._peer_cpus = W_CPUS + 1 - int(server)
        self._spin_checked = False
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)  # the peer never writes: readable = gone
        CloseOnce.__init__(self)

    # ------------------------------------------------------------ receive

    def recv(self, timeout: float | None = None) -> bytes:
        return bytes(self._rxview[:self.recv_into(self._rxview, timeout)])

    reads_into = True

    def recv_into(self, buf: memoryview, timeout: float | None = None) -> int:
        users = self._users
        users.append(None)
        try:
            if self.closed:
                return 0
            if not self._spin_checked:
                self._spin_budget()
            spin = self._spin_ns
            if self._spin_once:
                spin, self._spin_once = (max(spin, self._spin_once) if self._spin_max else 0), 0
            n: int = self._get_into(buf, spin)
            return n or self._sleep_for_data(buf, timeout)
        finally:
            users.pop()
            if self.closed and not users:
                self._release_once()

    def _sleep_for_data(self, buf: memoryview, timeout: float | None) -> int:
        """After the spin: bytes read into ``buf``, or 0 at an orderly end (peer
        closed and drained, or we closed)."""
        q = self._q
        get_into: Callable[[memoryview, int], int] = self._get_into
        deadline = deadline_after(timeout)
        slept_at = time.perf_counter_ns()
        while True:
            q[self._isleep_r] = 1
            self._fence()  # the flag is seen before we re-check the head
            closed = q[self._peer_closed]
            n = get_into(buf, 0)
            if not n and not closed and not self.closed:
                left = remaining(deadline)
                _sleep_on(self._data_waiter, self._i_data, SLICE if left is None else min(SLICE, left))
                closed = q[self._peer_closed]
                n = get_into(buf, 0)
            q[self._isleep_r] = 0
            if n:
                self._adapt_spin(time.perf_counter_ns() - slept_at)
                return n
            if closed or self.closed:
                return 0
            self._check_peer()
            if deadline is not None and remaining(deadline) == 0.0:
                raise Timeout(f"nothing from {self.peer} within {timeout} s")

    def expect_reply(self, within: float) -> None:
        self._spin_once = min(int(within * 1e9), MAX_REPLY_SPIN_NS)

    def _adapt_spin(self, late_ns: int) -> None:
        """After a sleep, data came ``late_ns`` after the spin gave up. Sooner than a
        full spin: the peer keeps a pace a spin catches, spin fully again. Later:
        this spin was burnt CPU, halve it — a server that a simulation reports to
        100 times a second then idles without spinning (the adaptive mutex's rule,
        as glibc's PTHREAD_MUTEX_ADAPTIVE_NP). Costs nothing on the spinning path."""
        if late_ns < self._spin_max:
            self._spin_ns = self._spin_max
        else:
            half = self._spin_ns >> 1
            self._spin_ns = half if half >= _SPIN_MIN_NS else 0

    def _spin_budget(self) -> int:
        """Spinning while the peer is pinned to our only CPU just delays it: don't.
        (Decided once the peer has written its CPU mask; until then, spin.)"""
        if not self._spin_checked and (peer := self._q[self._peer_cpus]):
            self._spin_checked = True
            both = peer | self._mask
            if both.bit_count() == 1 and both != 1 << 63:
                self._spin_max = self._spin_ns = 0
        return self._spin_max

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
                _sleep_on(self._space_waiter, self._o_space, SLICE if left is None else min(SLICE, left))
            q[self._osleep_w] = 0
            if room() or q[self._peer_closed] or self.closed:
                return  # the caller re-checks closed flags
            self._check_peer()
            if deadline is not None and remaining(deadline) == 0.0:
                raise Timeout(f"{self.peer} did not read for {self.send_timeout} s")

    # ------------------------------------------------------------ close

    def _on_close(self) -> None:
        self._q[self._my_closed] = 1
        for fd in self._events.values():  # wake the peer and our own blocked threads
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    def _release(self) -> None:
        self._rings.release()
        self._q.release()
        self._mm.close()
        _close_fds(list(self._events.values()))
        self._sock.close()


class ShmListener(CloseOnce, Listener):
    """The rendezvous socket ``/dev/shm/NAME.sock``, held under ``ServerLock("shm", NAME)``.

    /dev/shm is world-writable: the name may be removed or replaced under us.
    ``accept`` checks every ``HEAL_EVERY`` s that the name is still our socket
    and binds it again if not (we hold the lock, so no other ipcgw server can
    own the name), but never removes a file of another uid.
    """

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
        self._lock_ino = _inode(self._lock_file.path)
        CloseOnce.__init__(self)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._wake, select.POLLIN)
        self._sock: socket.socket | None = None
        self._ino = (0, 0)
        self._next_check = 0.0
        self._warned = ""
        try:
            _sweep(self.name)  # we hold the lock: whatever is there is a dead server's
            self._bind()
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise TransportError(f"cannot listen on {self.path}: {exc}") from exc
            raise

    def _bind(self) -> None:
        """(Re)create the socket at ``path``; a leftover of our uid (a dead server's)
        is removed first, another uid's is refused."""
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if st.st_uid != os.geteuid():
                raise TransportError(
                    f"{self.path} belongs to uid {st.st_uid}, not to this server: someone else "
                    f"took the name; have it removed, or pick another shm name")
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            os.chmod(self.path, self.endpoint.mode)  # /dev/shm is sticky: nobody replaced it since
            ino = _inode(self.path)
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        old, self._sock, self._ino = self._sock, sock, ino
        self._poll.register(sock, select.POLLIN)
        if old is not None:
            self._poll.unregister(old)
            old.close()

    def _heal(self) -> None:
        """If ``path`` is no longer our socket, bind it again (one log line)."""
        self._next_check = time.monotonic() + HEAL_EVERY
        try:
            found = _inode(self.path)
        except OSError:
            return
        if found == self._ino:
            return
        what = "replaced" if found != (0, 0) else "removed"
        try:
            if _inode(self._lock_file.path) != self._lock_ino:
                raise TransportError(f"our lock {self._lock_file.path} was removed too, so another "
                                     "server may own the name now: not taking it over")
            self._bind()
        except (OSError, TransportError) as exc:
            if self._warned != str(exc):  # one line per new reason, not one a second
                self._warned = str(exc)
                log.warning("shm rendezvous %s was %s; cannot recreate it: %s", self.path, what, exc)
            return
        self._warned = ""
        if self.closed:  # close() ran meanwhile: leave nothing behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        log.warning("shm rendezvous %s was %s; recreated", self.path, what)

    def accept(self) -> Connection:
        self._users.append(None)
        try:
            while not self.closed:
                events = self._poll.poll(HEAL_EVERY * 1000)
                if self.closed:
                    break
                if not events or time.monotonic() >= self._next_check:
                    self._heal()
                sock = self._sock
                assert sock is not None
                try:
                    csock, _ = sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                try:
                    return self._session(csock)
                except OSError:
                    csock.close()  # the client went away, or we ran out of memory: next one
            raise ListenerClosed(f"shm listener on {self.path} closed")
        finally:
            self._leave()

    def _session(self, csock: socket.socket) -> Connection:
        """A fresh sealed segment and four eventfds for this client, sent over its socket."""
        cid = f"c{next(self._ids)}-{secrets.token_hex(4)}"
        ring, size = self.ring, HEADER + 2 * self.ring
        fds: list[int] = []
        mm: mmap.mmap | None = None
        try:
            seg = os.memfd_create(f"ipcgw-{self.name}.{cid}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            fds.append(seg)
            os.ftruncate(seg, size)
            fcntl.fcntl(seg, fcntl.F_ADD_SEALS, SEALS)  # the peer cannot shrink it under us (SIGBUS)
            mm = mmap.mmap(seg, size)
            with memoryview(mm).cast("Q") as q:
                q[W_RING] = ring
                q[W_MAGIC] = MAGIC
            events = {kind: os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for kind in EVENT_KINDS}
            fds += events.values()
            csock.setblocking(False)
            socket.send_fds(csock, [f"IPCGW-SHM {LAYOUT} {cid} {ring}\n".encode()], fds)  # fits
        except BaseException:
            if mm is not None:
                mm.close()
            _close_fds(fds)
            raise
        os.close(seg)  # the mapping keeps the memory; the client has its own fd
        pid, uid, gid = _peer_cred(csock)
        conn = ShmConnection(mm, ring, events, csock, True, self.spin_us,
                             f"shm client pid {pid} uid {uid}")
        conn.peer_uid, conn.peer_gid = uid, gid
        return conn

    def _on_close(self) -> None:
        os.eventfd_write(self._wake, 1)
        with contextlib.suppress(OSError):
            if _inode(self.path) == self._ino:
                os.unlink(self.path)  # ours: we hold the ServerLock until just below
        self._lock_file.release()

    def _release(self) -> None:
        if self._sock is not None:
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
    line, fds = b"", []
    try:
        try:
            sock.settimeout(remaining(deadline))
            sock.connect(path)
            while not line.endswith(b"\n") and len(line) < 128:
                sock.settimeout(max(remaining(deadline) or 0.0, 0.001))
                chunk, got, _, _ = socket.recv_fds(sock, 128 - len(line), 8)
                fds += got
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
        if int(m[1]) != LAYOUT:
            raise ConnectError(f"shm server {name} speaks layout {int(m[1])}, this client {LAYOUT}: "
                               "run the same ipcgw version on both sides")
        cid, ring = m[2].decode(), int(m[3])
        if len(fds) != 1 + len(EVENT_KINDS):
            raise ConnectError(f"shm server {name} sent {len(fds)} fds, not {1 + len(EVENT_KINDS)}")
        mm = _map_segment(fds[0], name, cid, ring)
    except BaseException:
        _close_fds(fds)
        raise
    os.close(fds[0])
    events = dict(zip(EVENT_KINDS, fds[1:], strict=True))
    pid, uid, gid = _peer_cred(sock)
    sock.setblocking(False)
    conn = ShmConnection(mm, ring, events, sock, False, spin_us, f"shm server {name} pid {pid}")
    conn.peer_uid, conn.peer_gid = uid, gid
    return conn


def _map_segment(fd: int, name: str, cid: str, ring: int) -> mmap.mmap:
    """Map the server's segment after checking it can neither shrink nor grow under us."""
    try:
        st = os.fstat(fd)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        raise ConnectError(f"shm server {name} sent a segment fd that is not a memfd: {exc}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size != HEADER + 2 * ring or seals & SEALS != SEALS:
        raise ConnectError(f"shm server {name}: segment {cid} is not sealed at {HEADER + 2 * ring} bytes")
    mm = mmap.mmap(fd, st.st_size)
    with memoryview(mm).cast("Q") as q:
        ok = q[W_MAGIC] == MAGIC and q[W_RING] == ring
    if not ok:
        mm.close()
        raise ConnectError(f"shm segment {cid} of server {name} is not initialised")
    return mm
