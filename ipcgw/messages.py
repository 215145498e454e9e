"""Typed gateway messages and their msgpack codec.

On the wire a message is one msgpack array ``[tag, field1, field2, ...]`` with
the fields in the order of the dataclass. Arrays rather than maps: they are
about twice as fast to pack and unpack and a third smaller for the small
messages that dominate, and the layout is versioned by the handshake
(``Hello.version`` must equal :data:`PROTOCOL_VERSION`).

``decode`` trusts nothing: every frame is checked for msgpack validity, a known
tag, the field count and each field's type, and msgpack's own limits (derived
from the frame size, capped below) keep a tiny frame from allocating a large
container. Trailing NUL bytes (padding of ``fixed:N`` framing) are ignored.
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

__all__ = [
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
    "decode",
    "encode",
]

PROTOCOL_VERSION = 1
# Caps on container sizes inside one message, on top of msgpack's own
# limits (which are derived from the frame length).
MAX_CONTAINER = 1 << 20


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
    TAG: ClassVar[int] = 5
    seq: int = 0
    payload: bytes = b""


@dataclass(slots=True)
class Pong(Message):
    """Answer to Ping with the same seq and payload."""

    TAG: ClassVar[int] = 6
    seq: int = 0
    payload: bytes = b""


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
    "bytes": (bytes,),
    "bool": (bool,),
    "Any": _ANY,
    "dict[str, Any]": (dict,),
    "list[dict[str, Any]]": (list,),
}


class _Schema:
    """Per-class wire layout, with the two functions the hot paths call:
    ``fields(msg)`` -> ``(TAG, f1, f2, ...)`` and ``build(obj)`` -> message or None."""

    __slots__ = ("build", "cls", "fields", "names", "required", "types")

    def __init__(self, cls: type[Message]) -> None:
        fs = fields(cls)  # type: ignore[arg-type]
        self.cls = cls
        self.names = tuple(f.name for f in fs)
        self.types = tuple(_PYTYPES[f.type] for f in fs)
        self.fields = attrgetter("TAG", *self.names)  # TAG is a class attribute
        self.required = len(fs)
        self.build = _compile_build(cls, [str(f.type) for f in fs])


# One boolean expression per field annotation; ``v`` is the decoded array,
# ``v[0]`` the tag. Exact type checks: bool is not an int on the wire, and
# msgpack only ever produces these exact types.
_CHECKS = {
    "int": "type(v[{i}]) is int",
    "float": "type(v[{i}]) in _NUM",
    "str": "type(v[{i}]) is str",
    "bytes": "type(v[{i}]) is bytes",
    "bool": "type(v[{i}]) is bool",
    "Any": "True",
    "dict[str, Any]": "(type(v[{i}]) is dict and _str_keys(v[{i}]))",
    "list[dict[str, Any]]": "type(v[{i}]) is list",
}


def _str_keys(d: dict[Any, Any]) -> bool:
    return all(type(k) is str for k in d)


def _compile_build(cls: type[Message], annotations: list[str]) -> Callable[[list[Any]], Any]:
    """Generate ``lambda v: cls(v[1], ...) if len(v) == N and <checks> else None``:
    decode is on every hot path, and one generated expression costs a fifth of
    a loop over per-field checkers (and no slice of the array)."""
    n = len(annotations)
    checks = "".join(f" and {_CHECKS[a].format(i=i)}" for i, a in enumerate(annotations, 1))
    args = ", ".join(f"v[{i}]" for i in range(1, n + 1))
    build: Callable[[list[Any]], Any] = eval(
        f"lambda v: _cls({args}) if len(v) == {n + 1}{checks} else None",
        {"_cls": cls, "_NUM": (int, float), "_str_keys": _str_keys},
    )
    return build


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Hello, Welcome, Error, Bye, Ping, Pong, Report, Command, Result, Event, Stats,
)
_BY_TAG = {cls.TAG: _Schema(cls) for cls in MESSAGE_TYPES}
_FIELDS = {s.cls: s.fields for s in _BY_TAG.values()}
_BUILD = {tag: s.build for tag, s in _BY_TAG.items()}


_local = threading.local()


def encode(msg: Message) -> bytes:
    """Message -> msgpack bytes. Raises CodecError for a value msgpack cannot carry."""
    try:
        values = _FIELDS[type(msg)](msg)
    except KeyError:
        raise CodecError(f"not a gateway message: {type(msg).__name__}") from None
    try:
        # A Packer per thread: reusing one saves a third of encode, but its
        # buffer must not be shared between threads.
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(values)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode {type(msg).__name__}: {exc}") from None


def decode(data: bytes | bytearray | memoryview) -> Message:
    """msgpack bytes -> Message; DecodeError on anything malformed."""
    size = len(data)
    try:
        if size <= MAX_CONTAINER:  # msgpack caps containers at len(data) itself
            obj = _unpackb(data, strict_map_key=False)
        else:
            obj = _unpackb(data, strict_map_key=False, max_array_len=MAX_CONTAINER,
                           max_map_len=MAX_CONTAINER)
    except msgpack.ExtraData as extra:
        if bytes(extra.extra).strip(b"\0"):
            raise DecodeError(f"{len(extra.extra)} trailing bytes after the message") from None
        obj = extra.unpacked
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        if not size:
            raise DecodeError("empty frame") from None
        raise DecodeError(f"not valid msgpack: {exc}") from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise DecodeError(f"expected [tag, fields...], got {type(obj).__name__}")
    build = _BUILD.get(obj[0])
    if build is None:
        raise DecodeError(f"unknown message type tag {obj[0]}")
    msg = build(obj)
    if msg is None:
        raise DecodeError(_type_error(_BY_TAG[obj[0]], obj[1:]))
    return msg  # type: ignore[no-any-return]


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
    return f"{schema.cls.__name__}: invalid fields"


def _bad_number(types: tuple[type, ...], value: Any) -> bool:
    """bool is an int in Python but not a number on the wire; NaN is allowed."""
    if types is _NUMBER or types == (int,):
        return type(value) is bool
    return False
