"""Type stub of the C data path (``_shmring.c``); the interface is ``shmrings.PyRings``'s."""

import mmap
from collections.abc import Callable
from typing import Any

from ipcgw.transports.base import Buffer

class Rings:
    """One side's view of a client's ring pair: it produces into one ring and consumes the other.

    ``put``, ``get_into`` and ``room`` raise ``shmrings.RingCorrupted`` when the peer stored a
    counter outside the ring.
    """

    def __init__(self, segment: mmap.mmap, obase: int, ibase: int, ring: int,
                 words: tuple[int, int, int, int, int, int, int], chunk: int,
                 wake_reader: Callable[[], Any], wake_writer: Callable[[], Any]) -> None: ...
    def put(self, data: Buffer, /) -> int: ...
    def get_into(self, buf: bytearray | memoryview, spin_ns: int, /) -> int: ...
    def room(self) -> int: ...
    def fence(self) -> None: ...
    def release(self) -> None: ...
