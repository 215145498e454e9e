"""Typed gateway messages and their msgpack codec.

On the wire a message is one msgpack array ``[tag, field1, field2, ...]`` with
the fields in the order of the dataclass. Arrays rather than maps: they are
about twice as fast to pack and unpack and a third smaller for the small
messages that dominate, and the layout is versioned by the handshake
(``Hello.version`` must equal :data:`PROTOCOL_VERSION`).

``decode`` trusts nothing: the array header, tag and field count are read off
the first bytes before anything is built, each kind is unpacked with limits of
its own (see "decode limits" below: a hostile frame costs no more than a
legitimate one of its size), then each field's type is checked. Trailing NUL
bytes (padding of ``fixed:N`` framing) are ignored.
Expected failures raise :class:`DecodeError`; anything else is a bug.

Dataclasses are ``slots=True`` but not frozen: frozen construction goes through
``object.__setattr__`` and costs ~2x on the hot path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, ClassVar

import msgpack

from ipcgw.errors import CodecError, DecodeError

Buffer = bytes | bytearray | memoryview

__all__ = [
    "BULK_BIN",
    "PROTOCOL_VERSION",
    "Bye",
    "Command",
    "Error",
    "Event",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Report",
    "Result",
    "Stats",
    "Welcome",
    "build",
    "decode",
    "encode",
    "encode_parts",
    "kind_size_limit",
    "metric_error",
]

PROTOCOL_VERSION = 1


class Message:
    """Base of all messages; ``TAG`` is the wire type tag."""

    __slots__ = ()
    TAG: ClassVar[int]


@dataclass(slots=True)
class Hello(Message):
    """First message of a client: what it speaks, and (TCP) the server's token."""

    TAG: ClassVar[int] = 1
    version: int = PROTOCOL_VERSION
    framing: str = "length:4"
    codec: str = "msgpack"
    name: str = ""
    token: str = ""


@dataclass(slots=True)
class Welcome(Message):
    """Server accepts a Hello; ``session`` identifies the client in server logs."""

    TAG: ClassVar[int] = 2
    version: int = PROTOCOL_VERSION
    session: int = 0
    server: str = ""


@dataclass(slots=True)
class Error(Message):
    """Something the peer sent was refused; ``request_id`` 0 when not tied to a request."""

    TAG: ClassVar[int] = 3
    reason: str = ""
    request_id: int = 0


@dataclass(slots=True)
class Bye(Message):
    """Orderly end of a session, from either side."""

    TAG: ClassVar[int] = 4
    reason: str = ""


@dataclass(slots=True)
class Ping(Message):
    """``payload`` is bytes, or a read-only memoryview onto the received frame when it
    came in bulk (see :data:`BULK_BIN`)."""

    TAG: ClassVar[int] = 5
    seq: int = 0
    payload: bytes | memoryview = b""


@dataclass(slots=True)
class Pong(Message):
    """Answer to Ping with the same seq and payload."""

    TAG: ClassVar[int] = 6
    seq: int = 0
    payload: bytes | memoryview = b""


@dataclass(slots=True)
class Report(Message):
    """What the simulation observes on a path: ``metrics`` such as rssi_dbm,
    snr_db, rtt_ms, loss, link_up, keyed by name."""

    TAG: ClassVar[int] = 7
    sim_time: float = 0.0
    path_id: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    node_id: int = 0


@dataclass(slots=True)
class Command(Message):
    """Ask the server to act (``op`` such as ``endpoint.set_flags``); answered by a
    Result with the same ``request_id`` (0 = no answer wanted)."""

    TAG: ClassVar[int] = 8
    request_id: int = 0
    op: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Result(Message):
    TAG: ClassVar[int] = 9
    request_id: int = 0
    ok: bool = True
    value: Any = None
    error: str = ""


@dataclass(slots=True)
class Event(Message):
    """An MPTCP path-manager event (``kind`` like ``SUB_ESTABLISHED``) with its
    attributes; ``time`` is the server's wall clock."""

    TAG: ClassVar[int] = 10
    kind: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0


@dataclass(slots=True)
class Stats(Message):
    """Kernel TCP/MPTCP counters: one dict per MPTCP connection and per subflow."""

    TAG: ClassVar[int] = 11
    time: float = 0.0
    connections: list[dict[str, Any]] = field(default_factory=list)
    subflows: list[dict[str, Any]] = field(default_factory=list)


_NUMBER = (int, float)
_ANY = (object,)
_PYTYPES: dict[Any, tuple[type, ...]] = {
    "int": (int,),
    "float": _NUMBER,
    "str": (str,),
    "bytes | memoryview": (bytes, memoryview),
    "bool": (bool,),
    "Any": _ANY,
    "dict[str, Any]": (dict,),
    "list[dict[str, Any]]": (list,),
}

# ---------------------------------------------------------------- decode limits
#
# A msgpack byte can become a 64-byte Python object (an empty array), so the
# cost of a frame is bounded by its shape, not its size. Each kind may be
# decoded freely up to a size no legitimate message of the kind exceeds
# (handshake, Error, Bye, Report: 64 KiB; Command, Result, Event, Stats: 256
# KiB, <= ~18 MiB of objects at the worst). Larger frames are accepted only
# for kinds that carry bulk data, and only if they are *flat*: the top array,
# at most one map of MAX_BULK_ITEMS, scalars, short strings and bin. That is
# checked on the bytes before anything is built, so a large hostile frame
# costs what a Ping of the same size costs: its bytes once.

#: Frames of these sizes and below are unpacked without a look at their shape.
MAX_SMALL = 64 * 1024
MAX_RICH = 256 * 1024
#: Most metrics in one Report; only ``BOOL_METRICS`` may be booleans.
MAX_METRICS = 256
BOOL_METRICS = frozenset({"link_up"})
#: In a flat (large) frame: entries of its one map, bytes of each string.
MAX_BULK_ITEMS = 64
MAX_BULK_STR = 4096


@dataclass(frozen=True, slots=True)
class _Limits:
    free: int  # largest frame unpacked without a shape check
    bulk: bool  # larger frames allowed when flat
    max_map_len: int | None = None  # None: msgpack's default (the frame size)
    max_str_len: int | None = None
    no_bin: bool = False


_FIXED = _Limits(MAX_SMALL, False, 0, MAX_SMALL, True)  # strings and ints only
_LIMITS: dict[str, _Limits] = {
    "Hello": _FIXED, "Welcome": _FIXED, "Error": _FIXED, "Bye": _FIXED,
    # Ping/Pong: no keywords (they cost a tenth of the decode, and the size bounds the cost)
    "Ping": _Limits(MAX_SMALL, True), "Pong": _Limits(MAX_SMALL, True),
    "Report": _Limits(MAX_SMALL, False, MAX_METRICS, MAX_SMALL),
    "Command": _Limits(MAX_RICH, True), "Result": _Limits(MAX_RICH, True),
    "Event": _Limits(MAX_RICH, True), "Stats": _Limits(MAX_RICH, False),
}


class _Schema:
    """Per-class wire layout, with the two functions the hot paths call:
    ``fields(msg)`` -> ``(TAG, f1, f2, ...)`` and ``decode(data, size)`` -> message."""

    __slots__ = ("annotations", "cls", "decode", "fields", "limits", "names", "required", "types")

    def __init__(self, cls: type[Message]) -> None:
        fs = fields(cls)  # type: ignore[arg-type]
        self.cls = cls
        self.names = tuple(f.name for f in fs)
        self.annotations = tuple(str(f.type) for f in fs)
        self.types = tuple(_PYTYPES[a] for a in self.annotations)
        self.fields = attrgetter("TAG", *self.names)  # TAG is a class attribute
        self.required = len(fs)
        self.limits = _LIMITS[cls.__name__]
        self.decode = _compile_decode(self)


# One boolean expression per field annotation; ``v`` is the decoded array,
# ``v[0]`` the tag. Exact type checks: bool is not an int on the wire, and
# msgpack only ever produces these exact types.
_CHECKS = {
    "int": "type(v[{i}]) is int",
    "float": "type(v[{i}]) in _NUM",
    "str": "type(v[{i}]) is str",
    "bytes | memoryview": "type(v[{i}]) is bytes",  # msgpack makes bytes; views come from _decode_large
    "bool": "type(v[{i}]) is bool",
    "Any": "True",
    "dict[str, Any]": "(type(v[{i}]) is dict and _str_keys(v[{i}]))",
    "list[dict[str, Any]]": "type(v[{i}]) is list",
}


def _str_keys(d: dict[Any, Any]) -> bool:
    return all(type(k) is str for k in d)


_METRIC_TYPES = (int, float)


def _metrics_ok(d: dict[Any, Any]) -> bool:
    for k, x in d.items():
        if type(k) is not str or (type(x) not in _METRIC_TYPES and (type(x) is not bool
                                                                    or k not in BOOL_METRICS)):
            return False
    return True


def metric_error(metrics: Any) -> str | None:
    """Why ``metrics`` is not a valid Report.metrics (None if it is): a map of
    names to numbers (or booleans for ``BOOL_METRICS``), at most MAX_METRICS."""
    if type(metrics) is not dict:
        return f"Report.metrics must be a map of names to numbers, got {type(metrics).__name__}"
    if len(metrics) > MAX_METRICS:
        return f"Report has {len(metrics)} metrics, at most {MAX_METRICS} are allowed"
    for name, value in metrics.items():
        if type(name) is not str:
            return f"Report metric names must be strings, got {type(name).__name__} {name!r}"
        if type(value) in _METRIC_TYPES or (type(value) is bool and name in BOOL_METRICS):
            continue
        allowed = "a boolean" if name in BOOL_METRICS else "a number"
        return (f"Report metric {name!r} must be {allowed}, got {type(value).__name__} "
                f"{_short(value)} (metrics are numbers; booleans only for {', '.join(sorted(BOOL_METRICS))})")
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _compile_decode(schema: _Schema) -> Callable[[Any, int], Any]:
    """Generate the kind's decoder: limits, unpack, one boolean expression of
    type checks, construction. Decode is on every hot path; the generated code
    passes msgpack its limits as literal keywords (``**kwargs`` costs twice the
    unpack) and does no loop over per-field checkers.

    The caller has read the array header and the tag, so ``v`` is a list of
    ``required + 1`` items whose first is the tag."""
    lim, n = schema.limits, schema.required
    checks = [_CHECKS[a].format(i=i) for i, a in enumerate(schema.annotations, 1)]
    if schema.cls.__name__ == "Report":
        checks[2] = "(type(v[3]) is dict and _metrics_ok(v[3]))"
    kw = [] if lim.bulk else ["max_ext_len=0"]
    if lim.max_map_len is not None:  # a kind without free-form fields: its one array is the message
        kw.append(f"max_array_len={n + 1}")
        kw.append(f"max_map_len={lim.max_map_len}")
    if any(a in ("dict[str, Any]", "Any", "list[dict[str, Any]]") for a in schema.annotations):
        kw.append("strict_map_key=False")  # so a non-string key gets its own words
    if lim.max_str_len is not None:
        kw.append(f"max_str_len={lim.max_str_len}")
    if lim.no_bin:
        kw.append("max_bin_len=0")
    args = ", ".join(f"v[{i}]" for i in range(1, n + 1))
    src = f"""
def decode(data, size):
    if size > {lim.free}:
        return _large(_schema, data, size)
    try:
        v = _unpackb(data, {", ".join(kw)})
    except _ExtraData as extra:
        v = _unpadded(extra)
    except Exception as exc:
        raise _DecodeError(f"not valid msgpack: {{exc}}") from None
    if {" and ".join(checks) or "True"}:
        return _cls({args})
    raise _DecodeError(_type_error(_schema, v[1:]))
"""
    env: dict[str, Any] = {
        "_cls": schema.cls, "_schema": schema, "_NUM": _NUMBER, "_str_keys": _str_keys,
        "_metrics_ok": _metrics_ok, "_unpackb": msgpack.unpackb, "_ExtraData": msgpack.ExtraData,
        "_unpadded": _unpadded, "_DecodeError": DecodeError, "_type_error": _type_error,
        "_large": _decode_large,
    }
    exec(src, env)
    return env["decode"]  # type: ignore[no-any-return]


def _unpadded(extra: msgpack.ExtraData) -> Any:
    """The message before ``fixed:N`` NUL padding; DecodeError for other trailing bytes."""
    tail = extra.extra
    if tail.strip(b"\0"):
        raise DecodeError(f"{len(tail)} trailing bytes after the message") from None
    return extra.unpacked


_local = threading.local()


def encode(msg: Message) -> bytes:
    """Message -> msgpack bytes. Raises CodecError for a value msgpack cannot carry
    (and for a Report whose metrics are not numbers)."""
    parts = encode_parts(msg)
    return parts if type(parts) is bytes else b"".join(parts)  # type: ignore[arg-type]


# ---------------------------------------------------------------- bulk bins
#
# A payload of 1 MiB used to be copied twice by its sender (into the Packer's
# buffer, then out into the frame) and once by its receiver (out of the frame
# into a bytes). Now a bin of BULK_BIN bytes or more travels by reference on
# both sides: ``encode_parts`` leaves it out of the packed bytes so the
# transport writes it from the caller's buffer (sendmsg / writev), and a frame
# decoded as bulk (above its kind's free size, so flat) hands it out as a
# read-only memoryview onto the frame. ``bytes(view)`` is the copy, when wanted.

#: Bins at least this large are sent by reference and, in a bulk frame, received as views.
BULK_BIN = 32 * 1024
_BIN_TYPES = (bytes, bytearray, memoryview)


def _new_packer() -> msgpack.Packer:
    """This thread's Packer: reusing one saves a third of encode, but its buffer must
    not be shared between threads."""
    packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def _is_bulk(value: Any) -> bool:
    return type(value) in _BIN_TYPES and len(value) >= BULK_BIN and (
        type(value) is not memoryview or (value.format == "B" and value.ndim == 1))


def encode_parts(msg: Message) -> bytes | list[Buffer]:
    """The message's msgpack bytes or, when it carries a bulk bin (a field, or a value
    of its one map, of :data:`BULK_BIN` bytes or more), the same bytes as a list of
    parts in which each bulk bin is the caller's own buffer (``b"".join(parts)``).
    Every send runs this: the common case is one lookup of the values, a look at
    the one field that may be bulk, and one pack. CodecError as :func:`encode`."""
    cls = type(msg)
    try:
        values = _FIELDS[cls](msg)
    except KeyError:
        raise CodecError(f"not a gateway message: {cls.__name__}") from None
    at = _BULK_AT.get(cls)
    if at is not None:
        value = values[at]
        if type(value) is dict:
            if any(map(_is_bulk, value.values())):
                return _split(values, at, cls)
        elif _is_bulk(value):
            return _split(values, at, cls)
    elif cls is Report and not (type(msg.metrics) is dict  # type: ignore[attr-defined]
                                and _metrics_ok(msg.metrics)  # type: ignore[attr-defined]
                                and len(msg.metrics) <= MAX_METRICS):  # type: ignore[attr-defined]
        raise CodecError(metric_error(msg.metrics) or "invalid Report.metrics")  # type: ignore[attr-defined]
    try:
        packer = _local.packer
    except AttributeError:
        packer = _new_packer()
    try:
        return packer.pack(values)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode {cls.__name__}: {exc}") from None


def _split(values: tuple[Any, ...], at: int, cls: type) -> list[Buffer]:
    """``values`` packed around their bulk bins (``values[at]`` or its map's values)."""
    packer = getattr(_local, "packer", None) or _new_packer()
    pack = packer.pack
    parts: list[Buffer] = []
    head = [bytes((0x90 + len(values),))]  # every kind has fewer than 16 fields

    def item(value: Any) -> None:
        if not _is_bulk(value):
            head.append(pack(value))
            return
        n = len(value)
        head.append((b"\xc5" + n.to_bytes(2, "big")) if n < 0x10000 else (b"\xc6" + n.to_bytes(4, "big")))
        parts.append(b"".join(head))
        parts.append(value)
        head.clear()

    try:
        for i, value in enumerate(values):
            if i == at and type(value) is dict:
                head.append(packer.pack_map_header(len(value)))
                for key, entry in value.items():
                    head.append(pack(key))
                    item(entry)
            else:
                item(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode {cls.__name__}: {exc}") from None
    if head:
        parts.append(b"".join(head))
    return parts


def decode(data: bytes | bytearray | memoryview) -> Message:
    """msgpack bytes -> Message; DecodeError on anything malformed (see the limits above)."""
    size = len(data)
    try:
        kind_decode = _FAST[data[0] << 8 | data[1]]
    except (KeyError, IndexError):
        return _decode_slow(data, size)
    return kind_decode(data, size)  # type: ignore[no-any-return]


def _decode_slow(data: bytes | bytearray | memoryview, size: int) -> Message:
    """Any header form, and the words for a frame of the wrong shape, decided on
    the first bytes (nothing is built from a frame that is not [tag, ...])."""
    if not size:
        raise DecodeError("empty frame")
    count, pos = _array_header(data, size)
    if count < 0:
        if size > MAX_SMALL:
            raise DecodeError(f"expected [tag, fields...], got a {size}-byte frame starting with "
                              f"0x{data[0]:02x} (not a msgpack array)")
        try:  # small: say what it is instead
            obj = msgpack.unpackb(data, strict_map_key=False)
        except msgpack.ExtraData:
            raise DecodeError("expected [tag, fields...], got several msgpack objects") from None
        except Exception as exc:
            raise DecodeError(f"not valid msgpack: {exc}") from None
        raise DecodeError(f"expected [tag, fields...], got {type(obj).__name__}")
    tag = data[pos]
    if tag > 0x7F:
        raise DecodeError(f"expected [tag, fields...]: the tag must be a small integer, got byte 0x{tag:02x}")
    schema = _BY_TAG.get(tag)
    if schema is None:
        raise DecodeError(f"unknown message type tag {tag}")
    if count != schema.required + 1:
        raise DecodeError(f"{schema.cls.__name__} needs {schema.required} fields, got {count - 1}")
    return schema.decode(data, size)  # type: ignore[no-any-return]


def _array_header(data: bytes | bytearray | memoryview, size: int) -> tuple[int, int]:
    """(items, offset of the first item) of a top-level array, (-1, 0) if it is not
    one; DecodeError if the header cannot be right (each item takes >= 1 byte)."""
    head = data[0]
    if 0x90 <= head <= 0x9F:
        count, pos = head - 0x90, 1
    elif head in (0xDC, 0xDD):
        pos = 3 if head == 0xDC else 5
        if size < pos:
            raise DecodeError("not valid msgpack: truncated array header")
        count = int.from_bytes(data[1:pos], "big")
    else:
        return -1, 0
    if count > size - pos or count == 0:
        raise DecodeError(f"not valid msgpack: an array of {count} items in {size - pos} bytes"
                          if count else "expected [tag, fields...], got an empty array")
    return count, pos


def _decode_large(schema: _Schema, data: bytes | bytearray | memoryview, size: int) -> Message:
    """A frame above its kind's free size: only bulk kinds, and only flat (the top
    array, at most one map of MAX_BULK_ITEMS, scalars, short strings and bin).
    Built from one walk over the bytes: scalars and strings unpacked one by one,
    bins of BULK_BIN bytes or more handed out as read-only views onto ``data``."""
    name = schema.cls.__name__
    if not schema.limits.bulk:
        raise DecodeError(f"{name} frame of {size} bytes is larger than a {name} may be "
                          f"({schema.limits.free}); bulk data belongs in a Ping payload or a Command "
                          "argument")
    view = memoryview(data).toreadonly()
    pos = _array_header(data, size)[1]  # its count is the kind's (checked by the caller)
    v: list[Any] = [schema.cls.TAG]
    pos += 1  # the tag, checked by the caller
    maps = 0
    for field_name, annotation in zip(schema.names, schema.annotations, strict=True):
        marker = data[pos]
        if 0x80 <= marker <= 0x8F or marker in (0xDE, 0xDF):
            if annotation not in ("dict[str, Any]", "Any") or maps:
                raise DecodeError(f"a {name} over {schema.limits.free} bytes must be flat: "
                                  f"{name}.{field_name} is a map")
            items, pos = _map_header(data, pos, size)
            if items > MAX_BULK_ITEMS:
                raise DecodeError(f"a {name} over {schema.limits.free} bytes may have at most "
                                  f"{MAX_BULK_ITEMS} entries in {name}.{field_name}, got {items}")
            maps += 1
            flat: list[Any] = []
            for _ in range(2 * items):
                item, pos = _flat_item(view, pos, size, name, field_name)
                flat.append(item)
            try:
                v.append(dict(zip(flat[0::2], flat[1::2], strict=True)))
            except TypeError:  # a key msgpack allows but Python cannot hash: a bulk bin
                raise DecodeError(f"{name}.{field_name}: a map key cannot be a bulk bin") from None
        else:
            item, pos = _flat_item(view, pos, size, name, field_name)
            v.append(item)
    if pos < size and bytes(view[pos:]).strip(b"\0"):
        raise DecodeError(f"{size - pos} trailing bytes after the message")
    return _build_checked(schema, v)


def _build_checked(schema: _Schema, v: list[Any]) -> Message:
    for value, types, annotation in zip(v[1:], schema.types, schema.annotations, strict=True):
        if (types is not _ANY and type(value) not in types) or (
                annotation == "dict[str, Any]" and not _str_keys(value)):
            raise DecodeError(_type_error(schema, v[1:]))
    if schema.cls is Report and (len(v[3]) > MAX_METRICS or not _metrics_ok(v[3])):
        raise DecodeError(metric_error(v[3]) or "Report: invalid metrics")
    return schema.cls(*v[1:])


def kind_size_limit(cls: type[Message]) -> int:
    """Largest frame of this kind decoded without a shape check (others must be flat)."""
    return _BY_TAG[cls.TAG].limits.free


def build(cls: type[Message], values: list[Any]) -> Message:
    """A message of ``cls`` from its field values in order, with decode's type checks
    (DecodeError): for codecs other than msgpack (JSON Lines)."""
    schema = _BY_TAG[cls.TAG]
    if len(values) != schema.required:
        raise DecodeError(_type_error(schema, values))
    return _build_checked(schema, [cls.TAG, *values])


def _map_header(data: bytes | bytearray | memoryview, pos: int, size: int) -> tuple[int, int]:
    head = data[pos]
    if head <= 0x8F:
        return head - 0x80, pos + 1
    width = 2 if head == 0xDE else 4
    if pos + 1 + width > size:
        raise DecodeError("not valid msgpack: truncated map header")
    return int.from_bytes(data[pos + 1 : pos + 1 + width], "big"), pos + 1 + width


# Scalars by marker: bytes after the marker. Strings and bin: bytes of their length.
_SCALAR_TAIL = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
                0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_LENGTH_WIDTH = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}


def _flat_item(view: memoryview, pos: int, size: int, name: str, field: str) -> tuple[Any, int]:
    """The scalar, string or bin at ``pos`` and where it ends; DecodeError for a
    container, an ext, a long string or a truncated item."""
    if pos >= size:
        raise DecodeError(f"not valid msgpack: {name} ends early")
    head = view[pos]
    if head <= 0x7F or head >= 0xE0:
        end = pos + 1
    elif 0xA0 <= head <= 0xBF:
        end = pos + 1 + (head & 0x1F)
    elif head in _SCALAR_TAIL:
        end = pos + 1 + _SCALAR_TAIL[head]
    elif head in _LENGTH_WIDTH:
        width = _LENGTH_WIDTH[head]
        length = int.from_bytes(view[pos + 1 : pos + 1 + width], "big")
        if head >= 0xD9 and length > MAX_BULK_STR:
            raise DecodeError(f"a large {name} may carry strings of at most {MAX_BULK_STR} bytes "
                              f"({name}.{field} has one of {length}); send bulk data as bytes")
        end = pos + 1 + width + length
        if head <= 0xC6 and length >= BULK_BIN and end <= size:  # a bulk bin: a view, no copy
            return view[pos + 1 + width : end], end
    else:
        raise DecodeError(f"a large {name} must be flat: {name}.{field} holds a container or "
                          f"an ext (byte 0x{head:02x})")
    if end > size:
        raise DecodeError(f"not valid msgpack: {name}.{field} is truncated")
    try:
        return _unpackb(view[pos:end]), end
    except Exception as exc:
        raise DecodeError(f"not valid msgpack: {exc}") from None


_unpackb = msgpack.unpackb


def _type_error(schema: _Schema, values: list[Any]) -> str:
    """The words for a failed check (the slow path, only on bad input)."""
    if len(values) != schema.required:
        return f"{schema.cls.__name__} needs {schema.required} fields, got {len(values)}"
    for name, types, value in zip(schema.names, schema.types, values, strict=True):
        if not isinstance(value, types) or (types is not _ANY and _bad_number(types, value)):
            return (f"{schema.cls.__name__}.{name} must be {types[0].__name__}, "
                    f"got {type(value).__name__}")
        if type(value) is dict and not _str_keys(value):
            return f"{schema.cls.__name__}: map keys must be strings"
    if schema.cls is Report:
        return metric_error(values[2]) or "Report: invalid metrics"
    return f"{schema.cls.__name__}: invalid fields"


def _bad_number(types: tuple[type, ...], value: Any) -> bool:
    """bool is an int in Python but not a number on the wire; NaN is allowed."""
    if types is _NUMBER or types == (int,):
        return type(value) is bool
    return False


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Hello, Welcome, Error, Bye, Ping, Pong, Report, Command, Result, Event, Stats,
)
_BY_TAG = {cls.TAG: _Schema(cls) for cls in MESSAGE_TYPES}
_FIELDS = {s.cls: s.fields for s in _BY_TAG.values()}
# Where a kind may carry bulk bins, as the index into its values (TAG first): the
# field itself, or the values of its map.
_BULK_AT: dict[type[Message], int] = {cls: 1 + _BY_TAG[cls.TAG].names.index(name) for cls, name in (
    (Ping, "payload"), (Pong, "payload"), (Command, "args"), (Result, "value"), (Event, "attrs"))}
# The common case: a fixarray header byte then a fixint tag -> that kind's decoder.
_FAST = {(0x90 + s.required + 1) << 8 | tag: s.decode for tag, s in _BY_TAG.items()}
