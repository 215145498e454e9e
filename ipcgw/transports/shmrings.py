"""The shm transport's data path: ``Rings``, one side's view of a client's ring pair.

Two implementations with one interface and one wire behaviour:

- ``ipcgw.transports._shmring.Rings`` (C, built at install when a compiler is
  there): ~0.1 us per operation, spins without the GIL;
- :class:`PyRings` (here): the same in Python, ~0.6 us per operation, spins
  holding the GIL. It relies on x86-64 TSO (stores are seen in program order,
  loads are not reordered with loads) and on 8-byte counters being single
  aligned loads and stores (``memoryview.cast("Q")`` element access is one
  8-byte ``memcpy``, one ``mov``); the full barrier TSO lacks between "store a
  counter" and "load the peer's asleep flag" is a ``threading.Lock``
  acquire/release (glibc's ``sem_trywait``/``sem_post``: ``lock``-prefixed
  instructions, no syscall).

Trust: the peer may store anything into the segment at any time. Each shared
counter is read once into a local and checked against the ring size before
use (readable bytes and bytes in use are at most ``ring``, modulo 2**64, so a
counter that went backwards fails too); a violation raises
:class:`RingCorrupted`, which ends that session only. Counters wrap at 2**64
as in C.

A side may run either against a peer running the other. ``IPCGW_SHM_RINGS``
picks one: ``c`` (the default when built), ``python``.

Interface (the constructor takes word indexes from the segment layout, which
``shm.py`` owns):

- ``put(data) -> int``: copy what fits (at most ``chunk``) into the outgoing
  ring, publish it, wake the reader if it sleeps; bytes written, 0 when full,
  -1 when the peer closed;
- ``get_into(buf, spin_ns) -> int``: copy the readable bytes (as many as fit)
  into ``buf``, spinning up to ``spin_ns`` for them, 0 when none came; first
  hands back the room the previous call consumed (deferred: in a request/reply
  exchange that happens while the peer works). Into the caller's buffer: a
  large frame's bytes go from the ring straight into the frame;
- ``room()``, ``fence()``, ``release()`` (before the mmap is closed).

``put``, ``get_into`` and ``room`` raise :class:`RingCorrupted` on a bad counter.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ipcgw.errors import RingCorrupted, TransportError

__all__ = ["PyRings", "RingCorrupted", "rings_class"]

M64 = (1 << 64) - 1
Words = tuple[int, int, int, int, int, int, int]  # oh, ot, osleep_r, ih, it, isleep_w, peer_closed


class PyRings:
    """Pure-Python twin of the C ``Rings`` (see the module docstring)."""

    def __init__(self, segment: mmap.mmap, obase: int, ibase: int, ring: int, words: Words,
                 chunk: int, wake_reader: Callable[[], Any], wake_writer: Callable[[], Any]) -> None:
        self._mm = segment
        self._q = memoryview(segment).cast("Q")
        self._obase, self._ibase, self._ring, self._chunk = obase, ibase, ring, chunk
        self._oh, self._ot, self._osleep_r, self._ih, self._it, self._isleep_w, self._peer_closed = words
        self._wake_reader, self._wake_writer = wake_reader, wake_writer
        self._head = self._q[self._oh]
        self._seen_tail = self._q[self._ot]
        self._tail = self._public_tail = self._q[self._it]
        if (self._head - self._seen_tail) & M64 > ring:  # no room: put() re-reads and checks
            self._seen_tail = (self._head - ring) & M64
        lock = threading.Lock()
        self._fence_in, self._fence_out = lock.acquire, lock.release

    def fence(self) -> None:
        self._fence_in()
        self._fence_out()

    def room(self) -> int:
        """Free bytes in the outgoing ring, from the reader's tail read now (and checked)."""
        tail = self._q[self._ot]  # once: the peer may change it any time
        used = (self._head - tail) & M64
        if used > self._ring:
            raise RingCorrupted(
                f"shm peer corrupted the ring: its tail {tail} is not within the {self._ring}-byte "
                f"ring behind our head {self._head} (ending this session)")
        self._seen_tail = tail
        return self._ring - used

    def put(self, data: bytes | bytearray | memoryview) -> int:
        q, head, ring = self._q, self._head, self._ring
        if q[self._peer_closed]:
            return -1
        n = len(data)  # the caller passes bytes or a "B" memoryview
        room = ring - ((head - self._seen_tail) & M64)  # the cached tail was checked
        if n > room:
            room = self.room()
        n = min(n, room, self._chunk)
        if n:
            off = head % ring
            start = self._obase + off
            if off + n <= ring:
                self._mm[start:start + n] = data if n == len(data) else data[:n]
            else:
                first = ring - off
                self._mm[start:start + first] = data[:first]
                self._mm[self._obase:self._obase + n - first] = data[first:n]
            self._head = head = (head + n) & M64
            q[self._oh] = head  # one 8-byte store, after the data (TSO keeps the order)
            self._fence_in()  # full barrier, then: is the reader asleep?
            self._fence_out()
            if q[self._osleep_r]:
                self._wake_reader()
        return n

    def get_into(self, buf: bytearray | memoryview, spin_ns: int) -> int:
        tail = self._tail
        if tail != self._public_tail:
            self._publish_tail(tail)
        q, ih = self._q, self._ih
        head = q[ih]
        if head == tail and spin_ns > 0:
            now = time.perf_counter_ns
            end = now() + spin_ns
            while (head := q[ih]) == tail and now() < end:
                pass
        if head == tail:
            return 0
        n, ring = (head - tail) & M64, self._ring
        if n > ring:
            raise RingCorrupted(
                f"shm peer corrupted the ring: its head {head} is {n} bytes past our tail {tail}, "
                f"more than the {ring}-byte ring (ending this session)")
        n = min(n, len(buf))
        off = tail % ring
        start = self._ibase + off
        if off + n <= ring:
            buf[:n] = self._mm[start:start + n]
        else:
            first = ring - off
            buf[:first] = self._mm[start:self._ibase + ring]
            buf[first:n] = self._mm[self._ibase:self._ibase + n - first]
        self._tail = tail = (tail + n) & M64
        if n > self._chunk:
            self._publish_tail(tail)
        return n

    def _publish_tail(self, tail: int) -> None:
        self._public_tail = tail
        q = self._q
        q[self._it] = tail  # loads before this store stay before it (TSO): the writer may reuse
        self._fence_in()  # full barrier, then: does the writer wait for room?
        self._fence_out()
        if q[self._isleep_w]:
            self._wake_writer()

    def release(self) -> None:
        self._q.release()


def rings_class() -> type[Any]:
    """The ``Rings`` implementation this process uses (``IPCGW_SHM_RINGS``)."""
    choice = os.environ.get("IPCGW_SHM_RINGS", "c")
    if choice == "python":
        return PyRings
    if choice != "c":
        raise TransportError(f"IPCGW_SHM_RINGS must be c or python, not {choice!r}")
    try:
        from ipcgw.transports._shmring import Rings
    except ImportError:  # built without a C compiler
        return PyRings
    return Rings
