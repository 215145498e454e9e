"""Every exception ipcgw raises on purpose, in one tree.

    IpcgwError
    ├── UrlError                an endpoint URL is malformed (also a ValueError)
    ├── FramingError            bytes do not form valid frames
    │   ├── FrameTooLarge       a frame exceeds max_frame (size, max_size)
    │   └── FrameTimeout        a started frame did not complete in time (slowloris)
    ├── CodecError              a message cannot be expressed in the codec
    │   └── DecodeError         a frame is not a valid message of the codec
    ├── ProtocolError           a valid message at the wrong time (handshake)
    └── TransportError          the OS object or the peer failed us
        ├── ConnectError        no server there, or it refused us
        ├── Disconnected        the peer went away (EOF, EPIPE, dead pid)
        └── Timeout             nothing arrived in time (also a TimeoutError)

Anything else escaping ipcgw is a bug.
"""

from __future__ import annotations


class IpcgwError(Exception):
    """Root of every error ipcgw raises on purpose."""


class UrlError(IpcgwError, ValueError):
    """An endpoint URL that names no valid endpoint (scheme, address or parameter),
    with the reason and, where one is close, what was probably meant."""


class FramingError(IpcgwError):
    """The byte stream cannot be cut into frames (the stream is lost)."""


class FrameTooLarge(FramingError):
    """A frame is larger than the configured limit; raised before memory is spent."""

    def __init__(self, size: int, max_size: int) -> None:
        self.size = size
        self.max_size = max_size
        super().__init__(f"frame of {size} bytes exceeds max_frame={max_size}")


class FrameTimeout(FramingError):
    """A frame's first bytes came but not the rest within the deadline; the stream
    is lost (a peer trickling bytes must not hold a session forever)."""


class CodecError(IpcgwError):
    """A message cannot be expressed in the chosen codec (e.g. a Ping in sspi)."""


class DecodeError(CodecError):
    """A frame arrived intact but is not a valid message."""


class ProtocolError(IpcgwError):
    """The peer broke the session protocol (e.g. no Hello first, version mismatch)."""


class TransportError(IpcgwError):
    """An OS-level failure of the channel."""


class ConnectError(TransportError):
    """Could not reach a server at the URL (with the reason in words)."""


class Disconnected(TransportError):
    """The peer closed the channel or died."""


class Timeout(TransportError, TimeoutError):
    """Nothing happened within the timeout."""
