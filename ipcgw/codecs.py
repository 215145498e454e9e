"""Codec registry: the name in a URL's ``codec=`` -> how messages become bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ipcgw import messages, sspi
from ipcgw.messages import Message

__all__ = ["CODECS", "Codec", "get_codec"]


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    encode: Callable[[Message], bytes]
    decode: Callable[[bytes], Message]
    # msgpack sessions open with Hello/Welcome and get replies; legacy sspi
    # writers just write records and never read.
    handshake: bool
    replies: bool
    default_framing: str


CODECS: dict[str, Codec] = {
    "msgpack": Codec("msgpack", messages.encode, messages.decode, True, True, "length:4"),
    "sspi": Codec("sspi", sspi.encode, sspi.decode, False, False, "fixed:8"),
}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None
