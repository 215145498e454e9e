"""Transport registry: URL scheme -> ``module:Class``, imported on first use.

Lazy so that ``ipcgw ping tcp://...`` does not import sysv_ipc, and so that a
transport whose OS support is missing only fails when it is asked for.
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache

from ipcgw.errors import UrlError
from ipcgw.transports.base import Connection, Listener, Transport
from ipcgw.url import Endpoint, parse_url

__all__ = ["TRANSPORTS", "Connection", "Listener", "Transport", "connect_bytes", "get_transport"]

TRANSPORTS: dict[str, str] = {
    "fifo": "ipcgw.transports.fifo:FifoTransport",
    "sysv": "ipcgw.transports.sysv:SysvTransport",
    "posixmq": "ipcgw.transports.posixmq:PosixMqTransport",
    "tcp": "ipcgw.transports.sockets:TcpTransport",
    "unix": "ipcgw.transports.sockets:UnixTransport",
    "shm": "ipcgw.transports.shm:ShmTransport",
}


@cache
def get_transport(scheme: str) -> type[Transport]:
    try:
        target = TRANSPORTS[scheme]
    except KeyError:
        close = difflib.get_close_matches(scheme, TRANSPORTS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UrlError(
            f"unknown transport {scheme!r}{hint} (known: {', '.join(TRANSPORTS)})"
        ) from None
    module, _, name = target.partition(":")
    cls: type[Transport] = getattr(importlib.import_module(module), name)
    return cls


def connect_bytes(url: str | Endpoint, timeout: float = 5.0) -> Connection:
    """A raw byte connection (no handshake): for tools and tests of the wire."""
    endpoint = parse_url(url) if isinstance(url, str) else url
    return get_transport(endpoint.scheme).connect(endpoint, timeout)


def listen(url: str | Endpoint) -> Listener:
    endpoint = parse_url(url) if isinstance(url, str) else url
    return get_transport(endpoint.scheme).listen(endpoint)
