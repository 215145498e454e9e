"""The shm data path (``Rings``): C and Python twins, alone and against each other.

Both sides live in this process on one anonymous mapping laid out like a real
segment, so every case is exact and fast; test_transport_shm.py runs the
same implementations across processes.
"""

from __future__ import annotations

import mmap
import random
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import require_shm_c

from ipcgw.transports import shm
from ipcgw.transports.shmrings import PyRings, rings_class

RING = 4096
CHUNK = 1024


def _c_rings() -> type[Any]:
    require_shm_c()
    from ipcgw.transports._shmring import Rings

    return Rings  # type: ignore[no-any-return]


IMPLS = {"c": _c_rings, "python": lambda: PyRings}


class Side:
    """One end: its Rings plus counters of the wake-ups it asked for."""

    def __init__(self, impl: type[Any], mm: mmap.mmap, server: bool) -> None:
        out, inn = (1, 0) if server else (0, 1)
        oh, _osleep_w, ot, osleep_r = shm._words(out)
        ih, isleep_w, it, _isleep_r = shm._words(inn)
        self.peer_closed = shm.W_CLOSED + 1 - int(server)
        self.woke_reader = self.woke_writer = 0
        self.rings = impl(mm, shm.HEADER + out * RING, shm.HEADER + inn * RING, RING,
                          (oh, ot, osleep_r, ih, it, isleep_w, self.peer_closed), CHUNK,
                          self._wake_reader, self._wake_writer)

    def _wake_reader(self) -> None:
        self.woke_reader += 1

    def _wake_writer(self) -> None:
        self.woke_writer += 1


@pytest.fixture(params=[("c", "c"), ("python", "python"), ("c", "python"), ("python", "c")],
                ids=lambda p: f"{p[0]}-client-{p[1]}-server")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Side, Side, memoryview]]:
    mm = mmap.mmap(-1, shm.HEADER + 2 * RING)
    q = memoryview(mm).cast("Q")
    client = Side(IMPLS[request.param[0]](), mm, server=False)
    server = Side(IMPLS[request.param[1]](), mm, server=True)
    try:
        yield client, server, q
    finally:
        client.rings.release()
        server.rings.release()
        q.release()
        mm.close()


def test_bytes_arrive_exactly_across_wrap_around_and_partial_puts(pair) -> None:
    client, server, _ = pair
    rng = random.Random(3)
    sent, got = bytearray(), bytearray()
    for _ in range(400):
        data = rng.randbytes(rng.randrange(0, 3000))
        pos = 0
        while pos < len(data):
            n = client.rings.put(memoryview(data)[pos:])
            assert 0 <= n <= min(CHUNK, len(data) - pos)
            if n == 0:  # full: the reader drains (or hands back what it read), making room
                got += server.rings.get(0) or b""
            pos += n
        sent += data
        if rng.random() < 0.5:
            got += server.rings.get(0) or b""
    while (chunk := server.rings.get(0)) is not None:
        got += chunk
    assert bytes(got) == bytes(sent)


def test_empty_ring_gives_none_after_the_spin(pair) -> None:
    _, server, _ = pair
    assert server.rings.get(0) is None
    assert server.rings.get(20_000) is None  # 20 us of spinning, then None


def test_room_is_handed_back_on_the_next_get_not_before(pair) -> None:
    client, server, _ = pair
    assert client.rings.put(b"a" * 1000) == 1000
    assert client.rings.room() == RING - 1000
    assert server.rings.get(0) == b"a" * 1000
    assert client.rings.room() == RING - 1000  # deferred: the reader has not come back yet
    assert server.rings.get(0) is None
    assert client.rings.room() == RING


def test_a_full_ring_takes_nothing_until_drained(pair) -> None:
    client, server, _ = pair
    for _ in range(RING // CHUNK):
        assert client.rings.put(b"f" * CHUNK) == CHUNK
    assert client.rings.put(b"more") == 0
    assert len(server.rings.get(0)) == RING
    assert client.rings.put(b"more") == 4  # more than a chunk read: handed back at once


def test_peer_closed_refuses_the_write(pair) -> None:
    client, _, q = pair
    q[client.peer_closed] = 1
    assert client.rings.put(b"x") == -1


def test_wake_ups_only_when_the_other_side_said_it_sleeps(pair) -> None:
    client, server, q = pair
    _, _, _, reader_asleep = shm._words(0)  # c2s: the server reads it
    _, writer_asleep, _, _ = shm._words(0)  # c2s: the client writes it
    client.rings.put(b"1")
    assert client.woke_reader == 0
    q[reader_asleep] = 1
    client.rings.put(b"2")
    assert client.woke_reader == 1
    q[reader_asleep] = 0
    assert server.rings.get(0) == b"12"
    q[writer_asleep] = 1
    assert server.rings.get(0) is None  # hands back the room, sees the writer asleep
    assert server.woke_writer == 1


def test_default_implementation_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPCGW_SHM_RINGS", "python")
    assert rings_class() is PyRings
    monkeypatch.setenv("IPCGW_SHM_RINGS", "c")
    assert rings_class() is _c_rings()
    monkeypatch.setenv("IPCGW_SHM_RINGS", "rust")
    with pytest.raises(Exception, match="c or python"):
        rings_class()


def test_c_rings_refuse_a_geometry_that_does_not_fit() -> None:
    rings = _c_rings()
    mm = mmap.mmap(-1, shm.HEADER + 2 * RING)
    try:
        with pytest.raises(ValueError, match="geometry"):
            rings(mm, shm.HEADER, shm.HEADER + RING, 2 * RING, (16, 48, 64, 80, 112, 96, 3),
                  CHUNK, print, print)
        with pytest.raises(ValueError, match="geometry"):
            rings(mm, shm.HEADER, shm.HEADER + RING, RING, (16, 48, 64, 80, 112, 10**6, 3),
                  CHUNK, print, print)
        ok = rings(mm, shm.HEADER, shm.HEADER + RING, RING, (16, 48, 64, 80, 112, 96, 3),
                   CHUNK, print, print)
        ok.release()
        with pytest.raises(ValueError, match="released"):
            ok.put(b"x")
        mm.close()  # nothing holds the mapping any more
    finally:
        if not mm.closed:
            mm.close()
