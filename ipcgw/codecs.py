"""Codec registry: the name in a URL's ``codec=`` -> how messages become bytes, and
what the session protocol over it looks like (handshake, replies, default framing).

An entry is resolved once, when the URL is parsed; after that no layer asks which
codec it carries, only what the entry says. Entries name their module instead of
importing it: the URL layer and the transports read the traits without loading
msgpack; the first ``encode``/``decode`` loads the module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipcgw.messages import Buffer, Message

__all__ = ["CODECS", "Codec", "get_codec"]


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    #: The module with ``encode(msg) -> bytes`` and ``decode(bytes) -> Message``.
    module: str
    # msgpack and json sessions open with Hello/Welcome and get replies; legacy
    # sspi writers just write records and never read.
    handshake: bool
    replies: bool
    default_framing: str
    #: Text (no delimiter byte in its output): the one kind that may ride delimited:lf.
    text: bool = False
    #: A legacy writer of the mptcpd plugin: it opens the well-known FIFO itself
    #: (no per-client FIFO pair, no handshake) and only writes. Transports pick
    #: their legacy path on this, not on the codec's name.
    legacy_oneway: bool = False

    @property
    def encode(self) -> Callable[[Message], bytes]:
        fn: Callable[[Message], bytes] = importlib.import_module(self.module).encode
        return fn

    @property
    def encode_parts(self) -> Callable[[Message], bytes | list[Buffer]] | None:
        """The module's ``encode_parts`` (bulk bins as their own parts, for a scatter
        write), or None when it has none."""
        fn: Callable[[Message], bytes | list[Buffer]] | None = getattr(
            importlib.import_module(self.module), "encode_parts", None)
        return fn

    @property
    def decode(self) -> Callable[[bytes | bytearray], Message]:
        fn: Callable[[bytes | bytearray], Message] = importlib.import_module(self.module).decode
        return fn

    def binary_safe_on(self, framing: str) -> bool:
        """Whether this codec's bytes survive ``framing`` (binary ones cannot ride delimited:lf)."""
        return self.text or framing.strip() != "delimited:lf"


CODECS: dict[str, Codec] = {
    "msgpack": Codec("msgpack", "ipcgw.messages", True, True, "length:4"),
    "json": Codec("json", "ipcgw.jsonl", True, True, "delimited:lf", text=True),
    "sspi": Codec("sspi", "ipcgw.sspi", False, False, "fixed:8", legacy_oneway=True),
    # one read(fd, &msg, sizeof msg) of the 256-byte struct sspi_message per message
    "sspi2": Codec("sspi2", "ipcgw.sspi2", False, False, "read:256", legacy_oneway=True),
}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None
