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
        self._scatter = _SCATTER_MIN if isinstance(self.framer, LengthFramer) else 1 << 62
        self._encode, self._frame, self._decode = self.codec.encode, self.framer.encode, self.codec.decode
        self._feed = self._decoder.feed
        self._conn_send, self._conn_recv = conn.send, conn.recv

    def send(self, msg: Message) -> None:
        payload = self._encode(msg)
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
            return self._decode(frames.popleft())
        got = self._read(timeout)
        if len(got) == 1:  # the request/reply case: one read, one frame
            return self._decode(got[0])
        frames.extend(got)
        return self._decode(frames.popleft())

    def recv_frame(self, timeout: float | None = None) -> bytes:
        """Next frame; Disconnected at end of stream, Timeout, or FramingError."""
        frames = self._frames
        if not frames:
            frames.extend(self._read(timeout))
        return frames.popleft()

    def _read(self, timeout: float | None) -> list[bytes]:
        """Read until the decoder completes at least one frame; those frames."""
        recv, feed = self._conn_recv, self._feed
        deadline = None if timeout is None else time.monotonic() + timeout
        left = timeout
        started = None  # deadline of a frame whose first byte is here
        if self.frame_timeout is not None and self._decoder.pending:
            started = time.monotonic() + self.frame_timeout
        while True:
            if started is None:
                data = recv(left)
            else:
                try:
                    data = recv(self._until_frame_due(started, left))
                except Timeout:
                    if time.monotonic() < started:
                        raise
                    self._until_frame_due(started, left)  # raises FrameTimeout
                    raise
            if not data:
                self._eof()
            got = feed(data)
            if got:
                return got
            if started is None and self.frame_timeout is not None:
                started = time.monotonic() + self.frame_timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0.0:
                    raise Timeout(f"no complete frame from {self.conn.peer} within {timeout} s")

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
