"""ipcgw: an IPC gateway between an NS-3 simulation and the Linux MPTCP path manager.

The public surface is re-exported here; see the README for the picture.
"""

from __future__ import annotations

from ipcgw.client import Client, connect
from ipcgw.errors import (
    CodecError,
    ConnectError,
    DecodeError,
    Disconnected,
    FrameTimeout,
    FrameTooLarge,
    FramingError,
    IpcgwError,
    ProtocolError,
    Timeout,
    TransportError,
    UrlError,
)
from ipcgw.framing import make_framer
from ipcgw.messages import (
    PROTOCOL_VERSION,
    Bye,
    Command,
    Error,
    Event,
    Hello,
    Message,
    Ping,
    Pong,
    Report,
    Result,
    Stats,
    Welcome,
)

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Bye",
    "Client",
    "CodecError",
    "Command",
    "ConnectError",
    "DecodeError",
    "Disconnected",
    "Error",
    "Event",
    "FrameTimeout",
    "FrameTooLarge",
    "FramingError",
    "Hello",
    "IpcgwError",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "Report",
    "Result",
    "Stats",
    "Timeout",
    "TransportError",
    "UrlError",
    "Welcome",
    "connect",
    "make_framer",
]
