"""JSON Lines codec (``codec=json``): one message per line, readable by anything.

For ``delimited:lf`` framing, where binary msgpack cannot go (its bytes contain
``\\n``: a session id of 10 is one). A C++ ns-3 program, a shell script with
``printf`` or ``nc -U`` can talk to the gateway::

    {"type":"hello","version":1,"framing":"delimited:lf","codec":"json","name":"sh"}
    {"type":"report","sim_time":1.0,"path_id":2,"metrics":{"rssi_dbm":-80}}
    {"type":"command","request_id":1,"op":"endpoint.set_flags","args":{"id":2,"backup":true}}
    {"type":"ping","seq":1,"payload":"aGk="}

Same kinds, fields and handshake as msgpack: ``type`` is the kind's name in
lower case, the other keys are the dataclass fields (a missing one takes its
default, an unknown one is refused). Bytes fields (Ping/Pong ``payload``) are
base64 (RFC 4648, standard alphabet, with padding); bytes anywhere else cannot
be said in JSON (use msgpack). Output is ASCII with no spaces; a NaN metric is
written as ``NaN`` (Python's extension of JSON).

Bounded like msgpack: a line is parsed freely up to 256 KiB (nesting is capped
by the parser's recursion limit), each kind keeps msgpack's size limit, and a
longer line must be one flat object (one ``{``, no ``[``, a few keys): a Ping
or Pong with a large payload, nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import MISSING, fields
from typing import Any

from ipcgw import messages
from ipcgw.errors import CodecError, DecodeError
from ipcgw.messages import MAX_RICH, MESSAGE_TYPES, Message

__all__ = ["decode", "encode"]

_BY_NAME: dict[str, type[Message]] = {cls.__name__.lower(): cls for cls in MESSAGE_TYPES}
_FIELDS: dict[type[Message], tuple[tuple[str, bool, Any], ...]] = {}
for _cls in MESSAGE_TYPES:
    _FIELDS[_cls] = tuple(
        (f.name, str(f.type) == "bytes | memoryview",
         f.default if f.default is not MISSING else f.default_factory)
        for f in fields(_cls))  # type: ignore[arg-type]
#: Kinds whose lines may exceed MAX_RICH (flat, with a large base64 payload).
_BULK = {"ping", "pong"}
_MAX_BULK_KEYS = 8
_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def encode(msg: Message) -> bytes:
    """Message -> one JSON object (no newline: the framing adds it)."""
    try:
        spec = _FIELDS[type(msg)]
    except KeyError:
        raise CodecError(f"not a gateway message: {type(msg).__name__}") from None
    if isinstance(msg, messages.Report) and (why := messages.metric_error(msg.metrics)):
        raise CodecError(why)
    obj: dict[str, Any] = {"type": type(msg).__name__.lower()}
    for name, is_bytes, _ in spec:
        value = getattr(msg, name)
        obj[name] = base64.b64encode(value).decode("ascii") if is_bytes else value
    try:
        return _encoder.encode(obj).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise CodecError(f"cannot encode {type(msg).__name__} as JSON: {exc} "
                         "(bytes go only in a Ping payload; use codec=msgpack)") from None


def decode(data: bytes | bytearray | memoryview) -> Message:
    """One JSON line -> Message; DecodeError on anything malformed."""
    size = len(data)
    raw = bytes(data)
    # Above MAX_RICH: flat or nothing (the counts run in C, before an object is built).
    if size > MAX_RICH and (raw.count(b"{") != 1 or b"[" in raw or raw.count(b":") > _MAX_BULK_KEYS):
        raise DecodeError(f"a JSON line over {MAX_RICH} bytes must be one flat object (a Ping "
                              f"or Pong with a large payload), got {size} bytes")
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        if not raw.strip():
            raise DecodeError("empty line (one JSON object per line)") from None
        raise DecodeError(f"not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise DecodeError(f'expected a JSON object {{"type": ...}}, got {type(obj).__name__}')
    kind = obj.pop("type", None)
    cls = _BY_NAME.get(kind) if type(kind) is str else None
    if cls is None:
        raise DecodeError(f"unknown or missing message type {kind!r}; known: {', '.join(_BY_NAME)}")
    limit = messages.kind_size_limit(cls)
    if size > limit and kind not in _BULK:
        raise DecodeError(f"{cls.__name__} line of {size} bytes is larger than a {cls.__name__} "
                          f"may be ({limit})")
    values = []
    for name, is_bytes, default in _FIELDS[cls]:
        if name not in obj:
            values.append(default() if callable(default) else default)
            continue
        value = obj.pop(name)
        if is_bytes:
            value = _unbase64(cls.__name__, name, value)
        values.append(value)
    if obj:
        raise DecodeError(f"{cls.__name__} has no field {', '.join(map(repr, obj))}; fields: "
                          f"{', '.join(n for n, _, _ in _FIELDS[cls])}")
    return messages.build(cls, values)


def _unbase64(kind: str, name: str, value: Any) -> bytes:
    if type(value) is not str:
        raise DecodeError(f"{kind}.{name} must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{kind}.{name} is not valid base64") from None
