"""A channel is a transport connection + a framer + a codec: messages in, messages out.

The only place where the three layers meet; each stays ignorant of the others.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import NoReturn

from ipcgw.codecs import get_codec
from ipcgw.errors import Disconnected, Timeout
from ipcgw.framing import LengthFramer
from ipcgw.messages import Message
from ipcgw.transports.base import Connection, deadline_after, remaining
from ipcgw.url import Endpoint

__all__ = ["Channel"]

# Above this size a length-prefixed frame is sent as header + payload with a
# scatter write, instead of copying the payload behind its header.
_SCATTER_MIN = 32 * 1024


class Channel:
    """Send and receive whole messages over one connection (sends are thread-safe)."""

    def __init__(self, conn: Connection, endpoint: Endpoint) -> None:
        self.conn = conn
        self.endpoint = endpoint
        self.framer = endpoint.framer()
        self.codec = get_codec(endpoint.codec)
        self._decoder = self.framer.decoder()
        self._frames: deque[bytes] = deque()
        self._send_lock = threading.Lock()
        self._scatter = isinstance(self.framer, LengthFramer)

    def send(self, msg: Message) -> None:
        self.send_frame(self.codec.encode(msg))

    def send_frame(self, payload: bytes) -> None:
        if self._scatter and len(payload) >= _SCATTER_MIN:
            header = self.framer.encode_header(len(payload))  # type: ignore[attr-defined]
            with self._send_lock:
                self.conn.sendv((header, payload))
            return
        data = self.framer.encode(payload)
        with self._send_lock:
            self.conn.send(data)

    def recv(self, timeout: float | None = None) -> Message:
        return self.codec.decode(self.recv_frame(timeout))

    def recv_frame(self, timeout: float | None = None) -> bytes:
        """Next frame; Disconnected at end of stream, Timeout, or FramingError."""
        frames = self._frames
        if frames:
            return frames.popleft()
        if timeout is None:  # the server's loop: no deadline arithmetic
            while not frames:
                data = self.conn.recv(None)
                if not data:
                    self._eof()
                frames.extend(self._decoder.feed(data))
            return frames.popleft()
        deadline = deadline_after(timeout)
        while not frames:
            data = self.conn.recv(remaining(deadline))
            if not data:
                self._eof()
            frames.extend(self._decoder.feed(data))
            if not frames and deadline is not None and remaining(deadline) == 0.0:
                raise Timeout(f"no complete frame from {self.conn.peer} within {timeout} s")
        return frames.popleft()

    def _eof(self) -> NoReturn:
        held = self._decoder.pending
        tail = f" in the middle of a frame ({held} bytes held)" if held else ""
        raise Disconnected(f"{self.conn.peer} closed the channel{tail}")

    def close(self) -> None:
        self.conn.close()
