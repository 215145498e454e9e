"""A channel is a transport connection + a framer + a codec: messages in, messages out.

The only place where the three layers meet; each stays ignorant of the others.
Every round trip runs ``send`` and ``recv`` once on each side, so both bind
what they call at construction.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import NoReturn

from ipcgw.codecs import get_codec
from ipcgw.errors import Disconnected, FrameTimeout, Timeout
from ipcgw.framing import LengthFramer
from ipcgw.messages import Message
from ipcgw.transports.base import Connection
from ipcgw.url import Endpoint

__all__ = ["Channel"]

# Above this size a length-prefixed frame is sent as header + payload with a
# scatter write, instead of copying the payload behind its header.
_SCATTER_MIN = 32 * 1024
# One read of a stream transport: a frame up to about this size arrives whole in one
# read (a 64 KiB payload with its envelope is just over 64 KiB); a larger frame's
# head read here is copied into the frame's buffer, the rest read straight into it.
_RX_SIZE = 128 * 1024


class Channel:
    """Send and receive whole messages over one connection (sends are thread-safe).

    ``frame_timeout`` bounds how long a frame may take once its first byte has
    arrived (a server sets it: a peer that trickles a byte a second must not
    hold a session forever); waiting for a frame to *start* is not bounded by it.
    """

    #: Seconds from a frame's first byte to its last; None: no deadline.
    frame_timeout: float | None = None

    def __init__(self, conn: Connection, endpoint: Endpoint) -> None:
        self.conn = conn
        self.endpoint = endpoint
        self.framer = endpoint.framer()
        self.codec = get_codec(endpoint.codec)
        self._decoder = self.framer.decoder()
        self._frames: deque[bytes] = deque()
        self._send_lock = threading.Lock()
        length = isinstance(self.framer, LengthFramer)
        self._scatter = _SCATTER_MIN if length else 1 << 62
        # where a frame's header can be written apart from its payload, bulk bins go by reference
        parts = self.codec.encode_parts if length else None
        self._encode = parts or self.codec.encode
        self._frame, self._decode = self.framer.encode, self.codec.decode
        self._feed = self._decoder.feed
        self._conn_send, self._conn_recv = conn.send, conn.recv
        # Where the transport can read into a buffer, it reads into ours and the
        # decoder cuts frames from there (no bytes object per read), and a large
        # frame's rest goes straight into the frame's own buffer.
        self._rx = memoryview(bytearray(_RX_SIZE)) if conn.reads_into else None
        self._under_way = False  # the last read completed no frame: one may be part-read
        self._recv_into = conn.recv_into
        self._get_buffer = (getattr(self._decoder, "get_buffer", None)
                            if conn.reads_into else None)
        self._recycle = getattr(self._decoder, "recycle", lambda frame: None)

    def send(self, msg: Message) -> None:
        payload = self._encode(msg)
        if isinstance(payload, list):  # bulk bins: header, packed bytes and the bins, one scatter write
            header = self.framer.encode_header(sum(map(len, payload)))  # type: ignore[attr-defined]
            with self._send_lock:
                self.conn.sendv((header, *payload))
            return
        if len(payload) >= self._scatter:
            self.send_frame(payload)
            return
        data = self._frame(payload)
        with self._send_lock:
            self._conn_send(data)

    def send_frame(self, payload: bytes) -> None:
        if len(payload) >= self._scatter:
            header = self.framer.encode_header(len(payload))  # type: ignore[attr-defined]
            with self._send_lock:
                self.conn.sendv((header, payload))
            return
        data = self._frame(payload)
        with self._send_lock:
            self.conn.send(data)

    def recv(self, timeout: float | None = None) -> Message:
        frames = self._frames
        if frames:
            return self._decode_once(frames.popleft())
        got = self._read(timeout)
        if len(got) == 1:  # the request/reply case: one read, one frame
            return self._decode_once(got[0])
        frames.extend(got)
        return self._decode_once(frames.popleft())

    def _decode_once(self, frame: bytes | bytearray) -> Message:
        msg = self._decode(frame)
        if type(frame) is bytearray:  # a large frame's own buffer: every codec copies out
            self._recycle(frame)
        return msg

    def recv_frame(self, timeout: float | None = None) -> bytes:
        """Next frame; Disconnected at end of stream, Timeout, or FramingError."""
        frames = self._frames
        if not frames:
            frames.extend(self._read(timeout))
        return frames.popleft()

    def _read(self, timeout: float | None) -> list[bytes]:
        """Read until the decoder completes at least one frame; those frames."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = timeout
        started = None  # deadline of a frame whose first byte is here
        if self.frame_timeout is not None and self._decoder.pending:
            started = time.monotonic() + self.frame_timeout
        while True:
            if started is None:
                got = self._read_once(left)
            else:
                try:
                    got = self._read_once(self._until_frame_due(started, left))
                except Timeout:
                    if time.monotonic() < started:
                        raise
                    self._until_frame_due(started, left)  # raises FrameTimeout
                    raise
            if got:
                return got
            if started is None and self.frame_timeout is not None:
                started = time.monotonic() + self.frame_timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0.0:
                    raise Timeout(f"no complete frame from {self.conn.peer} within {timeout} s")

    def _read_once(self, timeout: float | None) -> list[bytes]:
        """One read from the connection: into a large frame's own buffer when one is
        under way and the transport can, else into the receive buffer (or a chunk
        the transport hands over), fed to the decoder."""
        rx = self._rx
        if rx is not None:
            # a large frame can be under way only if the last read completed none
            into = self._get_buffer() if self._under_way and self._get_buffer is not None else None
            if into is not None:
                n = self._recv_into(into, timeout)
                if not n:
                    self._eof()
                got: list[bytes] = self._decoder.buffer_updated(n)  # type: ignore[attr-defined]
            else:
                n = self._recv_into(rx, timeout)
                if not n:
                    self._eof()
                got = self._feed(rx[:n])  # decoders copy what they keep: rx is reused
            self._under_way = not got
            return got
        data = self._conn_recv(timeout)
        if not data:
            self._eof()
        return self._feed(data)

    def _until_frame_due(self, due: float, left: float | None) -> float:
        """The recv timeout while a frame is under way; raises once it is overdue."""
        until = due - time.monotonic()
        if until <= 0.0:
            raise FrameTimeout(
                f"{self.conn.peer} sent {self._decoder.pending} bytes of a frame and not the rest "
                f"within {self.frame_timeout} s (a started frame has a deadline; server option "
                "--frame-timeout)")
        return until if left is None else min(left, until)

    def _eof(self) -> NoReturn:
        held = self._decoder.pending
        tail = f" in the middle of a frame ({held} bytes held)" if held else ""
        raise Disconnected(f"{self.conn.peer} closed the channel{tail}")

    def close(self) -> None:
        self.conn.close()
