"""Sans-IO framing: bytes in, frames out. No sockets, no files, no threads.

Every transport carries a byte stream (or byte chunks); the framing layer cuts
it into frames. ``make_framer(spec)`` builds one of:

``length:N``      N-byte big-endian length header (N in 1, 2, 4, 8; ``length`` = 4)
``delimited:nul`` COBS-encoded payload + NUL; any binary payload, <= 1 byte per 254 overhead
                  (COBS in C, ipcgw/_cobs.c, with a pure-Python twin; both linear)
``delimited:lf``  payload + ``\\n``; for text, a payload containing ``\\n`` is refused
``fixed:N``       every frame exactly N bytes, short payloads padded with NUL
``read:N``        each chunk the transport hands over, cut every N bytes, is a frame: how
                  a C reader doing ``read(fd, buf, N)`` sees a FIFO (writes <= PIPE_BUF
                  are atomic); for legacy writers that may write less than N (sspi2)

Decoders keep one ``bytearray`` and a read offset, resume delimiter searches
where the previous one stopped and compact rarely, so feeding N bytes in any
chunking costs O(N). Limits are checked as soon as they can be known (the
header arrives, or ``max_frame`` bytes pass with no delimiter), so a decoder
never holds much more than ``max_frame``. After a ``FramingError`` the stream is
lost: discard the decoder.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Protocol

from ipcgw.errors import FrameTooLarge, FramingError

_getrefcount = sys.getrefcount
# References to a spare that only the decoder holds, as counted in _free_spare:
# its list's and getrefcount's argument.
_UNSHARED = 2
# Buffers of decoded large frames kept for reuse, per decoder (see recycle).
_SPARES = 2

__all__ = [
    "COBS_IMPL",
    "DEFAULT_MAX_FRAME",
    "Decoder",
    "FrameTooLarge",
    "Framer",
    "FramingError",
    "cobs_decode",
    "cobs_decode_py",
    "cobs_encode",
    "cobs_encode_py",
    "make_framer",
]

#: 16 MiB is the round number users send: the default admits a 16 MiB payload
#: plus its message envelope (a msgpack Ping adds 10 bytes) and room to spare.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024 + 64
_VALID_SPECS = "length, length:1|2|4|8, delimited:nul, delimited:lf, fixed:N, read:N (N >= 1)"
# Compact the buffer once the consumed prefix is this large (and more than half).
_COMPACT_AT = 64 * 1024
# A length-prefixed frame at least this large gets its own buffer as soon as its
# header is read, and the transport reads the rest straight into it (get_buffer).
BIG_FRAME = 64 * 1024


class Decoder(Protocol):
    """Stateful cutter of one byte stream."""

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Return every frame completed by ``data``, in order."""
        ...

    @property
    def pending(self) -> int:
        """Bytes held for a frame not complete yet."""
        ...


class Framer(Protocol):
    """A framing scheme: stateless encoder, factory of stateful decoders."""

    spec: str
    max_frame: int

    def encode(self, payload: bytes) -> bytes: ...

    def decoder(self) -> Decoder: ...


class _Buffer:
    """A bytearray with a read offset; the shared core of the stream decoders."""

    __slots__ = ("_buf", "_off")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._off = 0

    @property
    def pending(self) -> int:
        return len(self._buf) - self._off

    def _compact(self) -> None:
        off = self._off
        if off == len(self._buf):
            self._buf.clear()
            self._off = 0
        elif off >= _COMPACT_AT and off * 2 >= len(self._buf):
            del self._buf[:off]
            self._off = 0


# ---------------------------------------------------------------- length:N

_HEADER_STRUCTS = {n: struct.Struct(f">{c}") for n, c in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}


class LengthFramer:
    """N-byte big-endian unsigned length, then the payload."""

    def __init__(self, header: int = 4, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if header not in (1, 2, 4, 8):
            raise ValueError(f"length header must be 1, 2, 4 or 8 bytes, not {header}")
        self.header = header
        # A header of N bytes cannot describe more than 2**(8N) - 1 bytes.
        self.max_frame = min(max_frame, (1 << (8 * header)) - 1)
        self.spec = f"length:{header}"
        self._pack = _HEADER_STRUCTS[header].pack

    def encode(self, payload: bytes) -> bytes:
        n = len(payload)
        if n > self.max_frame:
            raise FrameTooLarge(n, self.max_frame)
        return self._pack(n) + payload

    def encode_header(self, size: int) -> bytes:
        """Header alone, so a transport can scatter-send header + large payload."""
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        return self._pack(size)

    def decoder(self) -> LengthDecoder:
        return LengthDecoder(self.header, self.max_frame)


class LengthDecoder(_Buffer):
    """Cuts ``length:N`` frames. Small frames are copied out of one shared buffer; a
    frame of :data:`BIG_FRAME` bytes or more gets a buffer of its exact size when its
    header arrives, which :meth:`get_buffer` exposes so the transport can read the rest
    of the frame straight into it (the asyncio ``BufferedProtocol`` shape, still
    sans-IO): the frame is then that buffer, a ``bytearray``, copied by nobody, and a
    message decoded from it may keep views onto it (bulk bins). Memory stays bounded:
    the frame under way (at most ``max_frame``) plus spares of decoded frames kept
    for reuse (together at most ``max_frame``); what the caller still holds is its own."""

    __slots__ = ("_big", "_big_at", "_hdr", "_max", "_need", "_size", "_spares")

    def __init__(self, header: int, max_frame: int) -> None:
        super().__init__()
        self._hdr = header
        self._max = max_frame
        self._need = -1  # payload length of the frame being assembled, -1 = header unknown
        self._size = _HEADER_STRUCTS[header].unpack_from
        self._big: bytearray | None = None  # a large frame being filled in place
        self._big_at = 0
        self._spares: list[bytearray] = []  # decoded large frames' buffers, to reuse

    @property
    def pending(self) -> int:
        held = len(self._buf) - self._off
        if self._big is not None:
            return self._hdr + self._big_at + held
        return held + self._hdr if self._need >= 0 else held

    def get_buffer(self) -> memoryview | None:
        """Where the next bytes of a large frame go (the unfilled rest of it), or None
        when there is no large frame under way: then use :meth:`feed`."""
        big = self._big
        return None if big is None else memoryview(big)[self._big_at:]

    def buffer_updated(self, n: int) -> list[bytes]:
        """``n`` bytes were written at the start of :meth:`get_buffer`'s view."""
        assert self._big is not None and 0 < n <= len(self._big) - self._big_at
        self._big_at += n
        if self._big_at < len(self._big):
            return []
        frame, self._big = self._big, None
        return [frame]  # type: ignore[list-item]  # a bytearray: frames are bytes-like

    def recycle(self, frame: bytes | bytearray) -> None:
        """The caller has decoded ``frame``: a large one's buffer may carry a later
        frame of the same size once nothing refers to it any more, saving its
        allocation (a fresh 1 MiB costs more than copying it: the kernel zero-fills
        its pages). Two are kept (up to ``max_frame`` bytes together, so a decoder
        holds at most twice that), because a reader loop still holds the previous
        message (and so its frame) while it waits for the next one."""
        spares = self._spares
        if (type(frame) is bytearray and len(frame) >= BIG_FRAME
                and not any(spare is frame for spare in spares)):  # identity: `in` compares bytes
            spares.append(frame)
            while len(spares) > _SPARES or sum(map(len, spares)) > self._max:
                del spares[0]  # the oldest; the spares together never exceed max_frame

    def _start_big(self, view: memoryview, pos: int, size: int) -> int:
        """A large frame's header is read at ``pos``: give it its own buffer with the
        bytes already here; returns where ``view`` is used up."""
        big = self._free_spare(size) or bytearray(size)
        have = min(size, len(view) - pos)
        big[:have] = view[pos:pos + have]
        self._big, self._big_at = big, have
        return pos + have

    def _free_spare(self, size: int) -> bytearray | None:
        """A spare of ``size`` bytes that nothing else refers to: a message decoded
        from it may keep views onto it (bulk bins), which must not change under it."""
        spares = self._spares
        for i in range(len(spares)):
            if len(spares[i]) == size and _getrefcount(spares[i]) == _UNSHARED:
                return spares.pop(i)
        return None

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        hdr = self._hdr
        if self._big is not None:  # a transport without recv_into: copy into the frame
            room = len(self._big) - self._big_at
            view = memoryview(data)
            self._big[self._big_at:self._big_at + min(room, len(data))] = view[:room]
            done = self.buffer_updated(min(room, len(data)))
            if len(data) > room:
                done += self.feed(bytes(view[room:]))
            return done
        if self._need < 0 and not self._buf:  # nothing held (the buffer is cleared when drained)
            end = len(data)
            if end > hdr:  # the request/response case: exactly one whole frame
                size = self._size(data)[0]
                if size == end - hdr and size <= self._max:
                    return [data[hdr:] if type(data) is bytes else data[hdr:].tobytes()]  # type: ignore[union-attr]
            # Parse straight from ``data`` and stash only the tail.
            frames: list[bytes] = []
            view = memoryview(data)
            pos = 0
            while end - pos >= hdr:
                size = self._size(view, pos)[0]
                if size > self._max:
                    raise FrameTooLarge(size, self._max)
                if end - pos - hdr < size:
                    if size >= BIG_FRAME:
                        pos = self._start_big(view, pos + hdr, size)
                    break
                pos += hdr
                frames.append(bytes(view[pos : pos + size]))
                pos += size
            if pos < end:
                self._buf += view[pos:]
                self._parse(frames)
            return frames
        frames = []
        self._buf += data
        self._parse(frames)
        return frames

    def _parse(self, frames: list[bytes]) -> None:
        buf, hdr = self._buf, self._hdr
        off, need, end = self._off, self._need, len(buf)
        while True:
            if need < 0:
                if end - off < hdr:
                    break
                need = int.from_bytes(buf[off : off + hdr], "big")
                if need > self._max:
                    raise FrameTooLarge(need, self._max)
                off += hdr
            if end - off < need:
                if need >= BIG_FRAME:
                    with memoryview(buf) as view:
                        off = self._start_big(view, off, need)
                    need = -1
                break
            with memoryview(buf) as view:  # one copy, not two; released before any resize
                frames.append(bytes(view[off : off + need]))
            off += need
            need = -1
        self._off, self._need = off, need
        self._compact()


# ---------------------------------------------------------------- delimited


def cobs_encode_py(payload: bytes | bytearray | memoryview) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no NUL byte.

    The pure-Python twin of the C encoder (same bytes). ``bytes.split`` does
    the per-byte work in C; Python loops once per zero byte or per 254-byte
    block, and long pieces are cut with a memoryview (no quadratic re-slicing).
    """
    out = bytearray()
    for piece in bytes(payload).split(b"\0"):
        if len(piece) >= 254:
            view, i, n = memoryview(piece), 0, len(piece)
            while n - i >= 254:
                out.append(0xFF)
                out += view[i : i + 254]
                i += 254
            piece = piece[i:]
        out.append(len(piece) + 1)
        out += piece
    return bytes(out)


def cobs_decode_py(encoded: bytes | bytearray | memoryview) -> bytes:
    """Inverse of :func:`cobs_encode_py`; raises FramingError on malformed input."""
    out = bytearray()
    pos, end, code = 0, len(encoded), 0
    while pos < end:
        code = encoded[pos]
        if code == 0:
            raise FramingError("COBS block code 0 inside a frame")
        nxt = pos + code
        if nxt > end:
            raise FramingError("truncated COBS block")
        out += encoded[pos + 1 : nxt]
        if code != 0xFF:  # a full 254-byte block implies no zero after it
            out.append(0)
        pos = nxt
    # Every encoding ends with a block implying a zero; that zero is not data.
    if code in (0, 0xFF):
        raise FramingError("COBS frame is empty or ends with a full block")
    del out[-1]
    return bytes(out)


def _cobs_decode_c(encoded: bytes | bytearray | memoryview) -> bytes:
    try:
        return _c_cobs_decode(encoded)
    except ValueError as exc:
        raise FramingError(str(exc)) from None


# The C path (ipcgw/_cobs.c, built when a compiler is there) is 20-500x faster
# on zero-heavy data; tests run both (the twin by its own name).
cobs_encode: Callable[[bytes | bytearray | memoryview], bytes]
cobs_decode: Callable[[bytes | bytearray | memoryview], bytes]
try:
    from ipcgw import _cobs  # framing's own C half (it knows nothing above bytes)
except ImportError:
    COBS_IMPL = "python"
    cobs_encode = cobs_encode_py
    cobs_decode = cobs_decode_py
else:
    COBS_IMPL = "c"
    _c_cobs_decode = _cobs.decode
    cobs_encode = _cobs.encode
    cobs_decode = _cobs_decode_c


class DelimitedFramer:
    """Payload (COBS-escaped for NUL) followed by a one-byte delimiter."""

    def __init__(self, kind: str = "nul", max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if kind not in ("nul", "lf"):
            raise ValueError(f"delimiter must be nul or lf, not {kind!r}")
        self.kind = kind
        self.max_frame = max_frame
        self.spec = f"delimited:{kind}"
        self.delimiter = b"\0" if kind == "nul" else b"\n"

    @property
    def max_encoded(self) -> int:
        """Longest encoded frame (without the delimiter) for a max_frame payload."""
        if self.kind == "nul":
            return self.max_frame + self.max_frame // 254 + 1
        return self.max_frame

    def encode(self, payload: bytes) -> bytes:
        n = len(payload)
        if n > self.max_frame:
            raise FrameTooLarge(n, self.max_frame)
        if self.kind == "nul":
            return cobs_encode(payload) + b"\0"
        if b"\n" in payload:
            raise FramingError("delimited:lf cannot carry a payload containing '\\n'")
        return payload + b"\n"

    def decoder(self) -> DelimitedDecoder:
        return DelimitedDecoder(self)


class DelimitedDecoder(_Buffer):
    __slots__ = ("_cobs", "_delim", "_max", "_max_encoded", "_scan")

    def __init__(self, framer: DelimitedFramer) -> None:
        super().__init__()
        self._delim = framer.delimiter
        self._cobs = framer.kind == "nul"
        self._max = framer.max_frame
        self._max_encoded = framer.max_encoded
        self._scan = 0  # where the next delimiter search starts (never rescan)

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        frames: list[bytes] = []
        buf = self._buf
        buf += data
        off, delim = self._off, self._delim
        scan = max(self._scan, off)
        while True:
            idx = buf.find(delim, scan)
            if idx < 0:
                break
            frames.append(self._finish(buf, off, idx))
            off = scan = idx + 1
        self._off = off
        self._compact()
        self._scan = len(self._buf)
        if self.pending > self._max_encoded:
            raise FrameTooLarge(self.pending, self._max_encoded)
        return frames

    def _finish(self, buf: bytearray, start: int, stop: int) -> bytes:
        size = stop - start
        if size > self._max_encoded:
            raise FrameTooLarge(size, self._max_encoded)
        if not self._cobs:
            return bytes(buf[start:stop])
        payload = cobs_decode(memoryview(buf)[start:stop])
        if len(payload) > self._max:
            raise FrameTooLarge(len(payload), self._max)
        return payload


# ---------------------------------------------------------------- fixed:N


class FixedFramer:
    """Every frame exactly ``size`` bytes; the codec ignores the NUL padding."""

    def __init__(self, size: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if size < 1:
            raise ValueError(f"fixed frame size must be >= 1, not {size}")
        if size > max_frame:
            raise FrameTooLarge(size, max_frame)
        self.size = size
        self.max_frame = size
        self.spec = f"fixed:{size}"

    def encode(self, payload: bytes) -> bytes:
        n = len(payload)
        if n > self.size:
            raise FrameTooLarge(n, self.size)
        if n == self.size:
            return bytes(payload)
        return payload + bytes(self.size - n)

    def decoder(self) -> FixedDecoder:
        return FixedDecoder(self.size)


class FixedDecoder(_Buffer):
    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        buf, size = self._buf, self._size
        buf += data
        off, end = self._off, len(buf)
        frames = [bytes(buf[i : i + size]) for i in range(off, end - size + 1, size)]
        self._off = off + size * len(frames)
        self._compact()
        return frames


# ---------------------------------------------------------------- read:N


class ReadFramer:
    """A frame per read of up to ``size`` bytes, as the legacy C readers cut a FIFO."""

    def __init__(self, size: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if size < 1:
            raise ValueError(f"read size must be >= 1, not {size}")
        if size > max_frame:
            raise FrameTooLarge(size, max_frame)
        self.size = size
        self.max_frame = size
        self.spec = f"read:{size}"

    def encode(self, payload: bytes) -> bytes:
        if not 0 < len(payload) <= self.size:
            raise FrameTooLarge(len(payload), self.size) if payload else FramingError(
                "read framing cannot carry an empty frame (a zero-byte read is EOF)")
        return bytes(payload)

    def decoder(self) -> ReadDecoder:
        return ReadDecoder(self.size)


class ReadDecoder:
    """Keeps nothing: whatever arrives is cut into frames at once."""

    __slots__ = ("_size",)
    pending = 0

    def __init__(self, size: int) -> None:
        self._size = size

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        size = self._size
        return [bytes(data[i : i + size]) for i in range(0, len(data), size)]


# ---------------------------------------------------------------- factory


def make_framer(spec: str, max_frame: int = DEFAULT_MAX_FRAME) -> Framer:
    """Build a framer from its spec string (see the module docstring)."""
    kind, _, arg = spec.strip().partition(":")
    try:
        if kind == "length":
            return LengthFramer(int(arg) if arg else 4, max_frame)
        if kind == "delimited" and arg in ("nul", "lf"):
            return DelimitedFramer(arg, max_frame)
        if kind == "fixed" and arg:
            return FixedFramer(int(arg), max_frame)
        if kind == "read" and arg:
            return ReadFramer(int(arg), max_frame)
    except ValueError as exc:
        raise ValueError(f"bad framing spec {spec!r}: {exc}; valid forms: {_VALID_SPECS}") from None
    raise ValueError(f"unknown framing spec {spec!r}; valid forms: {_VALID_SPECS}")
