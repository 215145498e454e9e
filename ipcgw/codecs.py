"""Codec registry: the name in a URL's ``codec=`` -> how messages become bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ipcgw import jsonl, messages, sspi, sspi2
from ipcgw.messages import Message

__all__ = ["CODECS", "Codec", "get_codec"]


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    encode: Callable[[Message], bytes]
    decode: Callable[[bytes], Message]
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

    def binary_safe_on(self, framing: str) -> bool:
        """Whether this codec's bytes survive ``framing`` (binary ones cannot ride delimited:lf)."""
        return self.text or framing.strip() != "delimited:lf"


CODECS: dict[str, Codec] = {
    "msgpack": Codec("msgpack", messages.encode, messages.decode, True, True, "length:4"),
    "json": Codec("json", jsonl.encode, jsonl.decode, True, True, "delimited:lf", text=True),
    "sspi": Codec("sspi", sspi.encode, sspi.decode, False, False, "fixed:8", legacy_oneway=True),
    "sspi2": Codec("sspi2", sspi2.encode, sspi2.decode, False, False, f"read:{sspi2.MESSAGE_SIZE}",
                   legacy_oneway=True),
}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None
