"""Every exception ipcgw raises on purpose, in one tree.

    IpcgwError
    ├── UrlError                an endpoint URL is malformed (also a ValueError)
    ├── FramingError            bytes do not form valid frames (the stream is lost)
    │   ├── FrameTooLarge       a frame exceeds max_frame (size, max_size)
    │   └── FrameTimeout        a started frame did not complete in time (slowloris)
    ├── CodecError              a message cannot be expressed in the codec (ours to fix)
    │   └── DecodeError         a frame is not a valid message of the codec (the peer's)
    ├── ProtocolError           a valid message at the wrong time
    │   ├── LocalProtocolError  we were about to break the protocol (a bug or a misuse here)
    │   └── RemoteProtocolError the peer broke it (no Hello first, wrong version, ...)
    ├── RemoteError             the peer answered, and its answer is no (reason, op)
    ├── TransportError          the OS object or the peer failed us
    │   ├── ConnectError        no server there, or it refused us (also: cannot listen)
    │   ├── Disconnected        the peer went away (EOF, EPIPE, dead pid)
    │   ├── Timeout             nothing arrived in time
    │   ├── ListenerClosed      accept() interrupted because the listener is closing
    │   └── RingCorrupted       a shared-memory peer stored an impossible ring index
    ├── KernelError             the kernel refused a netlink request (code, message, op)
    ├── TestbedError            namespaces or links could not be set up
    └── ServerStartError        a child ``ipcgw serve`` did not start (also a RuntimeError)

The split in ProtocolError follows h11: a Local error means "fix this program", a
Remote one "the other side misbehaved". Errors carry their fields, as websockets'
``PayloadTooBig(size, max_size)`` does. ``Timeout`` is deliberately not an
``OSError``: a transport's ``except OSError`` must never swallow it. Anything else
escaping ipcgw is a bug.
"""

from __future__ import annotations

import errno


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
    """A message arrived (or was about to be sent) where the session protocol has no place for it."""


class LocalProtocolError(ProtocolError):
    """This side was about to break the protocol: a bug or a misuse of the API here."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the session protocol (e.g. no Hello first, version mismatch)."""


class RemoteError(IpcgwError):
    """The peer answered, and the answer is a refusal: ``reason`` in its own words,
    for the request ``op`` (a Command's op, or "" for the session itself)."""

    def __init__(self, reason: str, op: str = "") -> None:
        self.reason = reason
        self.op = op
        super().__init__(f"{op} failed: {reason}" if op else reason)


class TransportError(IpcgwError):
    """An OS-level failure of the channel."""


class ConnectError(TransportError):
    """Could not reach a server at the URL, or serve one (with the reason in words)."""


class Disconnected(TransportError):
    """The peer closed the channel or died."""


class Timeout(TransportError):
    """Nothing happened within the timeout."""


class ListenerClosed(TransportError):
    """accept() was interrupted because the listener is closing."""


class RingCorrupted(TransportError):
    """A shared-memory peer stored a counter no correct peer could: that session
    must end (raised by both ring implementations, C and Python)."""


class KernelError(IpcgwError):
    """The kernel refused a request; ``message`` is its extack text (or strerror)."""

    def __init__(self, code: int, message: str, op: str = "") -> None:
        self.code = code
        self.message = message
        self.op = op
        super().__init__(message)

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.code, str(self.code))


class TestbedError(IpcgwError):
    """The testbed could not be built (the reason names the failing step)."""

    __test__ = False  # not a pytest class despite the name


class ServerStartError(IpcgwError, RuntimeError):
    """A child ``ipcgw serve`` (``ipcgw.testing.ServerProcess``) exited or stayed silent
    before it listened; the message carries its log."""
