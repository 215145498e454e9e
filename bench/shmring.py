"""The shm references' mechanism in plain Python: two SPSC byte rings in a POSIX
shared-memory segment, spin-then-sleep on POSIX semaphores.

Why a copy of the idea and not ipcgw's transport: the raw reference answers
"what does this mechanism cost in Python without ipcgw's framing, codec,
send lock and close handling?", so it must not import ipcgw. The layout is the
one of ``bench/c/shm.c`` (the C floor), word for word:

- a 4096-byte header of 8-byte words, then ring c2s, then ring s2c (``RING``
  bytes each);
- ring r's producer words on one 128-byte line at word ``(1 + 2r) * 16``:
  head, producer-asleep (waiting for room), eof; its consumer words on the
  next line: tail, consumer-asleep. One writer per line: no false sharing.

Wait strategy: a side that finds nothing to do spins on the counter for
``spin_us`` (0 when both sides are pinned to the same CPU: the peer could not
run meanwhile, as ipcgw's transport does), then sets its asleep flag, passes a
full barrier, re-checks and sleeps on its semaphore in 0.25 s slices. The
other side posts only when it sees the flag after its own barrier (Dekker:
x86-64 may let a later load pass an earlier store; a ``threading.Lock``
acquire/release is a ``lock``-prefixed instruction, no syscall).
Counters are single aligned 8-byte loads/stores through ``memoryview.cast("Q")``.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from collections.abc import Callable

import posix_ipc

__all__ = ["RING", "SPIN_US", "ShmEnd", "create", "names", "unlink"]

HEADER = 4096
RING = 1 << 20
CHUNK = RING // 4  # big writes are published in pieces, so the reader overlaps the copy
SPIN_US = 50
SLICE = 0.25  # seconds per semaphore wait between liveness checks
SEM_KINDS = ("c2s.data", "c2s.space", "s2c.data", "s2c.space")


def names(base: str) -> list[str]:
    """The segment name, then the four semaphore names (``base`` starts with '/')."""
    return [f"{base}.seg", *(f"{base}.{kind}" for kind in SEM_KINDS)]


def create(objs: list[str]) -> None:
    """Create the zeroed segment and the semaphores (count 0), mode 0600; the caller
    owns the names and unlinks them (``unlink``) on every path."""
    shm = posix_ipc.SharedMemory(objs[0], posix_ipc.O_CREX, 0o600, HEADER + 2 * RING)
    shm.close_fd()
    for name in objs[1:]:
        posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0).close()


def unlink(objs: list[str]) -> None:
    """Remove the names; objects stay alive while mapped or open (like an unlinked file)."""
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(objs[0])
    for name in objs[1:]:
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(name)


def _words(ring: int) -> tuple[int, int, int, int, int]:
    """(head, producer-asleep, eof, tail, consumer-asleep) word indexes of ring 0 or 1."""
    prod = (1 + 2 * ring) * 16
    return prod, prod + 1, prod + 2, prod + 16, prod + 17


class ShmEnd:
    """One side: writes its outgoing ring, reads its incoming one. ``server`` is the echo."""

    def __init__(self, objs: list[str], server: bool, spin_us: int,
                 alive: Callable[[], bool] = lambda: True) -> None:
        shm = posix_ipc.SharedMemory(objs[0])
        try:
            self._mm = mmap.mmap(shm.fd, HEADER + 2 * RING)
        finally:
            shm.close_fd()
        self._mv = memoryview(self._mm)
        self._q = self._mv.cast("Q")
        sems = {kind: posix_ipc.Semaphore(name) for kind, name in zip(SEM_KINDS, objs[1:],
                                                                       strict=True)}
        self._sems = list(sems.values())
        out, inn = (1, 0) if server else (0, 1)
        self._oh, self._o_wsleep, self._oeof, self._ot, self._o_rsleep = _words(out)
        self._ih, self._i_wsleep, self._ieof, self._it, self._i_rsleep = _words(inn)
        self._obase, self._ibase = HEADER + out * RING, HEADER + inn * RING
        o, i = ("s2c", "c2s") if server else ("c2s", "s2c")
        self._o_data, self._o_space = sems[f"{o}.data"], sems[f"{o}.space"]  # post / wait
        self._i_data, self._i_space = sems[f"{i}.data"], sems[f"{i}.space"]  # wait / post
        self._head = self._tail = 0
        self._spin_ns = spin_us * 1000
        self._fence = threading.Lock()
        self._alive = alive
        self._aborted = False

    # ------------------------------------------------------------ write

    def write(self, data: bytes | memoryview) -> None:
        """All of ``data`` into the outgoing ring, waiting for room as needed."""
        q, mv, base, ot = self._q, self._mv, self._obase, self._ot
        if len(data) > CHUNK:
            data = memoryview(data).cast("B")  # slices without copies
        n, pos, head = len(data), 0, self._head
        while pos < n:
            free = RING - (head - q[ot])
            if not free:
                self._wait_space(head)
                continue
            k = min(free, n - pos, CHUNK)
            off = head % RING
            first = min(k, RING - off)
            mv[base + off:base + off + first] = data if first == n else data[pos:pos + first]
            if k > first:
                mv[base:base + k - first] = data[pos + first:pos + k]
            pos += k
            head += k
            q[self._oh] = head  # one 8-byte store after the data stores (TSO keeps the order)
            self._publish()
        self._head = head

    def end(self) -> None:
        """The end marker (a stream's EOF): stored after the last head."""
        self._q[self._oeof] = 1
        self._publish()

    def _publish(self) -> None:
        fence = self._fence  # full barrier between the head store and the asleep load
        fence.acquire()
        fence.release()
        if self._q[self._o_rsleep]:
            self._o_data.release()

    def _wait_space(self, head: int) -> None:
        q, ot = self._q, self._ot
        if self._spin(lambda: head - q[ot] < RING):
            return
        while True:
            q[self._o_wsleep] = 1
            with self._fence:
                pass
            if head - q[ot] >= RING:
                with contextlib.suppress(posix_ipc.BusyError, posix_ipc.SignalError):
                    self._o_space.acquire(SLICE)
            q[self._o_wsleep] = 0
            if head - q[ot] < RING:
                return
            self._check()

    # ------------------------------------------------------------ read

    def read_into(self, view: memoryview) -> int:
        """Up to ``len(view)`` bytes that are there (waiting for some); 0 at the end marker."""
        q, tail = self._q, self._tail
        head = q[self._ih]
        if head == tail:
            head = self._wait_data(tail)
            if head < 0:
                return 0
        k = min(head - tail, len(view))
        off = tail % RING
        first = min(k, RING - off)
        start = self._ibase + off
        view[:first] = self._mv[start:start + first]
        if k > first:
            view[first:k] = self._mv[self._ibase:self._ibase + k - first]
        self._tail = tail = tail + k
        q[self._it] = tail
        fence = self._fence  # full barrier, then: does the writer wait for room?
        fence.acquire()
        fence.release()
        if q[self._i_wsleep]:
            self._i_space.release()
        return k

    def _wait_data(self, tail: int) -> int:
        """The new head, or -1 at the end marker."""
        q, ih, ieof = self._q, self._ih, self._ieof
        if self._spin(lambda: q[ih] != tail):
            return q[ih]
        while True:
            q[self._i_rsleep] = 1
            with self._fence:
                pass
            eof, head = q[ieof], q[ih]  # eof first: its store came after the last head's
            if head == tail and not eof:
                with contextlib.suppress(posix_ipc.BusyError, posix_ipc.SignalError):
                    self._i_data.acquire(SLICE)
                eof, head = q[ieof], q[ih]
            q[self._i_rsleep] = 0
            if head != tail:
                return head
            if eof:
                return -1
            self._check()

    def _spin(self, ready: Callable[[], bool]) -> bool:
        """Busy-wait up to spin_us for ``ready()``: no syscall, as ipcgw's transport."""
        if not self._spin_ns:
            return False
        now = time.perf_counter_ns
        end = now() + self._spin_ns
        while now() < end:
            if ready():
                return True
        return False

    # ------------------------------------------------------------ liveness and close

    def _check(self) -> None:
        if self._aborted or not self._alive():
            raise EOFError("shm peer gone")

    def abort(self) -> None:
        """From another thread: make a blocked write/read raise EOFError (the peer died)."""
        self._aborted = True
        for sem in (self._i_data, self._o_space):
            with contextlib.suppress(posix_ipc.Error):
                sem.release()

    def close(self) -> None:
        self._q.release()
        self._mv.release()
        self._mm.close()
        for sem in self._sems:
            with contextlib.suppress(posix_ipc.Error):
                sem.close()
