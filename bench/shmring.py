"""The raw-Python shm reference: ipcgw's own ring code without the rest of ipcgw.

Why these rings: the reference answers "what does the shm mechanism cost from
Python without ipcgw's framing, codec, channel and close protocol?". A ring in
pure Python (as this file used to be) is slower than the C data path ipcgw
runs (``ipcgw/transports/_shmring.c``), so ipcgw could look *faster* than its
own reference. Here both sides use the very ``Rings`` class the transport
uses (``rings_class()``: the C one when built, else its Python twin; ``IMPL``
says which), in the transport's layout 3:

- one memfd segment (sealed: no shrink/grow), a 4096-byte header of 8-byte
  words, then ring c2s, then ring s2c (``RING`` bytes each); ring r's head,
  writer-asleep, tail and reader-asleep words each on their own 128-byte line
  at word ``(1 + 4r) * 16 + {0, 16, 32, 48}``;
- four eventfds (``{c2s,s2c}.{data,space}``) to sleep on; no names, so
  nothing can be left in /dev/shm. The bench creates them (``create``) and
  hands them to the echo child by fd (``pass_fds``);
- words 2 (client) and 3 (server) are the end marker (the transport's closed
  flags), stored after the last head; word 6 is the "aborted" flag ``Rings``
  checks before each put.

Wait strategy, the transport's: ``Rings.get`` spins up to ``spin_us`` (no
GIL), then the reader sets its asleep flag, fences, re-checks and polls its
eventfd in 0.25 s slices; the writer posts only when it sees the flag. No
spinning when both sides are pinned to one CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import time
from collections.abc import Callable

from ipcgw.transports.shmrings import rings_class

__all__ = ["IMPL", "RING", "SPIN_US", "ShmEnd", "close_fds", "create"]

HEADER = 4096
RING = 1 << 20
CHUNK = RING // 4  # big writes are published in pieces, so the reader overlaps the copy
SEGMENT = HEADER + 2 * RING
SPIN_US = 50  # ipcgw's default spin_us
SLICE_MS = 250  # per eventfd wait between liveness checks
LINE = 16  # words per 128 bytes
W_EOF = 2  # + 0 client, + 1 server
W_ABORTED = 6
EVENT_KINDS = ("c2s.data", "c2s.space", "s2c.data", "s2c.space")
IMPL = "C" if rings_class().__module__.endswith("_shmring") else "Python twin"


def _words(ring: int) -> tuple[int, int, int, int]:
    """(head, writer-asleep, tail, reader-asleep) word indexes of ring 0 (c2s) or 1 (s2c)."""
    base = (1 + 4 * ring) * LINE
    return base, base + LINE, base + 2 * LINE, base + 3 * LINE


def create() -> list[int]:
    """A zeroed sealed segment, then the four eventfds: fds the caller owns (``close_fds``)."""
    fds: list[int] = []
    try:
        seg = os.memfd_create("ipcgw-bench-raw", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        fds.append(seg)
        os.ftruncate(seg, SEGMENT)
        fcntl.fcntl(seg, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        for _ in EVENT_KINDS:
            fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
    except BaseException:
        close_fds(fds)
        raise
    return fds


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _post(fd: int) -> Callable[[], None]:
    def post() -> None:
        with contextlib.suppress(OSError):  # a full counter already means "posted"
            os.eventfd_write(fd, 1)
    return post


class ShmEnd:
    """One side: writes its outgoing ring, reads its incoming one. ``objs`` are the
    fds of ``create()`` (as strings in the echo child's argv); this object owns them
    from now on. ``server`` is the echo."""

    def __init__(self, objs: list[str] | list[int], server: bool, spin_us: int,
                 alive: Callable[[], bool] = lambda: True) -> None:
        self._fds = [int(x) for x in objs]
        seg, events = self._fds[0], dict(zip(EVENT_KINDS, self._fds[1:], strict=True))
        self._mm = mmap.mmap(seg, SEGMENT)
        self._q = memoryview(self._mm).cast("Q")
        out, inn = (1, 0) if server else (0, 1)
        oh, self._osleep_w, ot, self._osleep_r = _words(out)
        ih, isleep_w, it, self._isleep_r = _words(inn)
        self._my_eof, self._peer_eof = W_EOF + out, W_EOF + inn
        o, i = ("s2c", "c2s") if server else ("c2s", "s2c")
        self._o_data = events[f"{o}.data"]
        self._i_data, self._o_space = events[f"{i}.data"], events[f"{o}.space"]
        self._data_poll, self._space_poll = select.poll(), select.poll()
        self._data_poll.register(self._i_data, select.POLLIN)
        self._space_poll.register(self._o_space, select.POLLIN)
        self._rings = rings_class()(
            self._mm, HEADER + out * RING, HEADER + inn * RING, RING,
            (oh, ot, self._osleep_r, ih, it, isleep_w, W_ABORTED), CHUNK,
            _post(self._o_data), _post(events[f"{i}.space"]))
        # rings_class() is one of two classes with the same interface (shmrings.PyRings).
        self._put: Callable[[bytes | memoryview], int] = self._rings.put
        self._get_into: Callable[[memoryview, int], int] = self._rings.get_into
        self._fence: Callable[[], None] = self._rings.fence
        self._spin_ns = spin_us * 1000
        self._alive = alive
        self._aborted = False

    # ------------------------------------------------------------ write

    def write(self, data: bytes | memoryview) -> None:
        """All of ``data`` into the outgoing ring, waiting for room as needed."""
        put = self._put
        done = put(data)
        if done == len(data):
            return
        view, pos = memoryview(data).cast("B"), max(done, 0)
        while pos < len(view) or done < 0:
            if done < 0:
                raise EOFError("shm reference aborted")
            done = put(view[pos:])
            if done == 0:
                self._wait_space()
            pos += max(done, 0)

    def end(self) -> None:
        """The end marker (a stream's EOF): stored after the last head."""
        q = self._q
        q[self._my_eof] = 1
        self._fence()
        if q[self._osleep_r]:
            os.eventfd_write(self._o_data, 1)

    def _wait_space(self) -> None:
        q, room = self._q, self._rings.room
        now = time.perf_counter_ns
        end = now() + self._spin_ns
        while now() < end:
            if room():
                return
        while True:
            q[self._osleep_w] = 1
            self._fence()
            if not room():
                self._sleep(self._space_poll, self._o_space)
            q[self._osleep_w] = 0
            if room():
                return
            self._check()

    # ------------------------------------------------------------ read

    def read_into(self, view: memoryview) -> int:
        """Up to ``len(view)`` bytes that are there (waiting for some); 0 at the end marker."""
        return self._get_into(view, self._spin_ns) or self._sleep_for_data(view)

    def _sleep_for_data(self, view: memoryview) -> int:
        """After the spin: bytes read into ``view``, or 0 at the end marker."""
        q, get_into = self._q, self._get_into
        while True:
            q[self._isleep_r] = 1
            self._fence()  # the flag is seen before we re-check the head
            eof = q[self._peer_eof]  # first: stored after the last head
            n = get_into(view, 0)
            if not n and not eof:
                self._sleep(self._data_poll, self._i_data)
                eof = q[self._peer_eof]
                n = get_into(view, 0)
            q[self._isleep_r] = 0
            if n or eof:
                return n
            self._check()

    @staticmethod
    def _sleep(poller: select.poll, fd: int) -> None:
        if poller.poll(SLICE_MS):
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)

    # ------------------------------------------------------------ liveness and close

    def _check(self) -> None:
        if self._aborted or not self._alive():
            raise EOFError("shm peer gone")

    def abort(self) -> None:
        """From another thread: make a blocked write/read raise EOFError (the peer died)."""
        self._aborted = True
        with contextlib.suppress(ValueError):
            self._q[W_ABORTED] = 1
        for fd in self._fds[1:]:
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    def close(self) -> None:
        self._rings.release()
        self._q.release()
        self._mm.close()
        close_fds(self._fds)
