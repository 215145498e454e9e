"""The shm data path (``Rings``): C and Python twins, alone and against each other.

Both sides live in this process on one anonymous mapping laid out like a real
segment, so every case is exact and fast; test_transport_shm.py runs the
same implementations across processes.
"""

from __future__ import annotations

import mmap
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import require_shm_c

from ipcgw.transports import shm
from ipcgw.transports.shmrings import PyRings, RingCorrupted, rings_class

RING = 4096
CHUNK = 1024


def _c_rings() -> type[Any]:
    require_shm_c()
    from ipcgw.transports._shmring import Rings

    return Rings  # type: ignore[no-any-return]


IMPLS: dict[str, Callable[[], type[Any]]] = {"c": _c_rings, "python": lambda: PyRings}


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

    def get(self, spin_ns: int) -> bytes | None:
        """What one ``get_into`` of a ring-sized buffer reads; None when nothing came."""
        buf = bytearray(RING)
        n = self.rings.get_into(buf, spin_ns)
        return bytes(buf[:n]) if n else None

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
                got += server.get(0) or b""
            pos += n
        sent += data
        if rng.random() < 0.5:
            got += server.get(0) or b""
    while (chunk := server.get(0)) is not None:
        got += chunk
    assert bytes(got) == bytes(sent)


def test_empty_ring_gives_none_after_the_spin(pair) -> None:
    _, server, _ = pair
    assert server.get(0) is None
    assert server.get(20_000) is None  # 20 us of spinning, then None


def test_room_is_handed_back_on_the_next_get_not_before(pair) -> None:
    client, server, _ = pair
    assert client.rings.put(b"a" * 1000) == 1000
    assert client.rings.room() == RING - 1000
    assert server.get(0) == b"a" * 1000
    assert client.rings.room() == RING - 1000  # deferred: the reader has not come back yet
    assert server.get(0) is None
    assert client.rings.room() == RING


def test_a_full_ring_takes_nothing_until_drained(pair) -> None:
    client, server, _ = pair
    for _ in range(RING // CHUNK):
        assert client.rings.put(b"f" * CHUNK) == CHUNK
    assert client.rings.put(b"more") == 0
    assert len(server.get(0)) == RING
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
    assert server.get(0) == b"12"
    q[writer_asleep] = 1
    assert server.get(0) is None  # hands back the room, sees the writer asleep
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


# ---------------------------------------------------------------- a hostile peer's counters

C2S_HEAD, _, C2S_TAIL, _ = shm._words(0)


@pytest.mark.parametrize("ahead", [RING + 1, 64 << 20, 1 << 63, (1 << 64) - 1])
def test_a_head_more_than_a_ring_ahead_or_behind_is_refused(pair, ahead: int) -> None:
    client, server, q = pair
    assert client.rings.put(b"ok") == 2
    assert server.get(0) == b"ok"
    q[C2S_HEAD] = (q[C2S_HEAD] + ahead) % (1 << 64)  # the client's word, stored by a hostile client
    with pytest.raises(RingCorrupted, match="shm peer corrupted the ring: its head"):
        server.get(0)
    with pytest.raises(RingCorrupted):  # and it stays refused: nothing was consumed
        server.get(0)


def test_a_full_ring_from_the_head_is_still_fine(pair) -> None:
    _, server, q = pair
    q[C2S_HEAD] = RING  # exactly a ring ahead: legal, all readable
    assert len(server.get(0)) == RING


@pytest.mark.parametrize("past_head", [1, RING, 1 << 63, -RING - 1])
def test_a_tail_ahead_of_the_head_or_a_ring_behind_is_refused(pair, past_head: int) -> None:
    client, _, q = pair
    for _ in range(RING // CHUNK):  # fill: the next put must re-read the tail
        assert client.rings.put(b"f" * CHUNK) == CHUNK
    q[C2S_TAIL] = (RING + past_head) % (1 << 64)  # the server's word, stored by a hostile server
    with pytest.raises(RingCorrupted, match="shm peer corrupted the ring: its tail"):
        client.rings.put(b"x")
    with pytest.raises(RingCorrupted):
        client.rings.room()


def test_counters_wrap_at_2_to_the_64_in_both_twins() -> None:
    for writer, reader in [("c", "python"), ("python", "c"), ("python", "python")]:
        mm = mmap.mmap(-1, shm.HEADER + 2 * RING)
        q = memoryview(mm).cast("Q")
        start = (1 << 64) - 100
        for word in (C2S_HEAD, C2S_TAIL):
            q[word] = start
        client = Side(IMPLS[writer](), mm, server=False)
        server = Side(IMPLS[reader](), mm, server=True)
        try:
            data = bytes(range(256)) * 4
            assert client.rings.put(data) == len(data)
            assert server.get(0) == data
            assert q[C2S_HEAD] == (start + len(data)) % (1 << 64)
            assert server.get(0) is None
            assert client.rings.room() == RING
        finally:
            client.rings.release()
            server.rings.release()
            q.release()
            mm.close()


def test_get_into_takes_what_fits_and_leaves_the_rest_in_order(pair) -> None:
    """A reader's buffer may be smaller than what is readable (a frame's own buffer
    near its end): the rest stays in the ring for the next call, across the wrap."""
    client, server, _ = pair
    sent = bytes(range(256)) * 12  # 3072 bytes: the second put wraps around
    got = bytearray()
    for _ in range(2):
        pos = 0
        while pos < len(sent):
            pos += client.rings.put(memoryview(sent)[pos:])
            buf = bytearray(700)
            while n := server.rings.get_into(memoryview(buf)[:333], 0):
                assert n <= 333
                got += buf[:n]
                assert bytes(buf[333:]) == bytes(367)  # nothing written past the view
    assert bytes(got) == sent * 2
