"""ipcgw: an IPC gateway between an NS-3 simulation and the Linux MPTCP path manager.

The public surface is re-exported here, imported on first use (PEP 562): a
program that uses one transport, or the URL parser, does not load msgpack, the
client or the server; see the README for the picture.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "Client": "ipcgw.client",
    "connect": "ipcgw.client",
    "make_framer": "ipcgw.framing",
    **dict.fromkeys(("CodecError", "ConnectError", "DecodeError", "Disconnected", "FrameTimeout",
                     "FrameTooLarge", "FramingError", "IpcgwError", "KernelError", "ListenerClosed",
                     "LocalProtocolError", "ProtocolError", "RemoteError", "RemoteProtocolError",
                     "RingCorrupted", "TestbedError", "Timeout", "TransportError", "UrlError"),
                    "ipcgw.errors"),
    **dict.fromkeys(("PROTOCOL_VERSION", "Bye", "Command", "Error", "Event", "Hello", "Message",
                     "Ping", "Pong", "Report", "Result", "Stats", "Welcome"), "ipcgw.messages"),
}

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
    "KernelError",
    "ListenerClosed",
    "LocalProtocolError",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "Report",
    "Result",
    "RingCorrupted",
    "Stats",
    "TestbedError",
    "Timeout",
    "TransportError",
    "UrlError",
    "Welcome",
    "connect",
    "make_framer",
]  # the keys of _EXPORTS, pinned by tests/test_layers.py


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ipcgw' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
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
        KernelError,
        ListenerClosed,
        LocalProtocolError,
        ProtocolError,
        RemoteError,
        RemoteProtocolError,
        RingCorrupted,
        TestbedError,
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
