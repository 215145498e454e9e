"""Decode amplification (#13.1): a hostile frame costs no more than a legitimate one of its size.

Before: one 16 MiB frame of nested empty arrays (an array of array32 headers of
2**20 ``0x90`` each) grew the server by ~1.1 GiB and took seconds to decode.
Each bomb here is decoded in a fresh child process that measures its peak
traced memory (and, for the issue's bomb, its RSS), so one test's garbage
cannot hide or inflate another's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import msgpack
import pytest

from ipcgw.errors import DecodeError
from ipcgw.framing import DEFAULT_MAX_FRAME
from ipcgw.messages import Command, Ping, Report, decode, encode

MAX = DEFAULT_MAX_FRAME
BOUND = 2 * MAX  # decoder memory for any input


def issue_bomb() -> bytes:
    """The issue's frame: array32 headers of 2**20 empty arrays each, wrapped in one
    array32, as many as fit in max_frame (each inner array passed the old cap of 2**20)."""
    inner = b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20)
    n = (MAX - 5) // len(inner)
    return b"\xdd" + n.to_bytes(4, "big") + inner * n


def _fill(prefix: bytes, unit: bytes, size: int = MAX) -> bytes:
    return prefix + unit * ((size - len(prefix)) // len(unit))


def _arr32(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big")


def _map32(n: int) -> bytes:
    return b"\xdf" + n.to_bytes(4, "big")


def bombs() -> dict[str, Callable[[], bytes]]:
    """Crafted frames (built when used): every shape that made msgpack build many objects."""
    rest = MAX - 16
    return {
        "issue": lambda: issue_bomb(),
        "issue-unwrapped": lambda: (b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20)) * 15,
        "flat-empty-arrays": lambda: _arr32(rest) + b"\x90" * rest,
        "flat-empty-maps": lambda: _map32(rest // 2) + b"\x00\x80" * (rest // 2),
        "many-nils": lambda: _arr32(rest) + b"\xc0" * rest,
        "many-int16": lambda: _arr32(rest // 3) + b"\xd1\x01\x00" * (rest // 3),
        "deep-nesting": lambda: b"\x91" * MAX,
        "ping-shaped-nested": lambda: b"\x93\x05" + _arr32(rest) + b"\x90" * rest,
        "ping-payload-nested": lambda: b"\x93\x05\x01" + _arr32(rest) + b"\x90" * rest,
        "ping-wide-array32": lambda: _arr32(3) + b"\x05\x01" + _arr32(rest) + b"\x90" * rest,
        "report-many-metrics": lambda: b"\x95\x07\xcb" + bytes(8) + b"\x01" + _map32(rest // 4)
        + b"".join(b"\xa2" + (i & 0xFFFF).to_bytes(2, "big") for i in range(rest // 4)),
        "command-wide-args": lambda: b"\x94\x08\x01\xa1x" + _map32(rest // 3)
        + b"".join(b"\xcd" + (i & 0xFFFF).to_bytes(2, "big") for i in range(rest // 3)),
        "command-args-of-arrays": lambda: _fill(b"\x94\x08\x01\xa1x\x81\xa1a" + _arr32(rest), b"\x90"),
        "command-args-tree": lambda: _fill(b"\x94\x08\x01\xa1x\x81\xa1a" + b"\x9f" * 64, b"\x9f\x90\x90"),
        "result-value-nested": lambda: _fill(b"\x95\x09\x01\xc3" + _arr32(rest), b"\x90"),
        "stats-lists": lambda: _fill(b"\x94\x0b\x00" + _arr32(rest), b"\x80"),
        "event-attrs-maps": lambda: _fill(b"\x94\x0a\xa1x" + _map32(rest // 2), b"\x00\x80"),
        "huge-str-header": lambda: b"\x93\x05\x01\xdb\xff\xff\xff\xff" + bytes(MAX - 8),
        "huge-bin-header": lambda: b"\x93\x05\x01\xc6\xff\xff\xff\xff" + bytes(MAX - 8),
        "huge-bin-header-small": lambda: b"\x93\x05\x01\xc6\xff\xff\xff\xff",
        "bulk-command-long-str": lambda: b"\x94\x08\x01\xa1x\x81\xa1s\xdb" + (MAX - 20).to_bytes(4, "big")
        + b"\xf0\x9f\x98\x80" * ((MAX - 20) // 4),
        "hello-many-strings": lambda: _fill(_arr32(6) + b"\x01", b"\xa0"),
        "free-size-stats-bomb": lambda: _fill(b"\x94\x0b\x00" + _arr32(256 * 1024 - 16), b"\x90", 256 * 1024),
        "free-size-command-bomb": lambda: _fill(b"\x94\x08\x01\xa1x\x81\xa1a\x9f", b"\x9f" + b"\x90" * 15,
                                        256 * 1024),
    }


_CHILD = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    from ipcgw.messages import decode
    from ipcgw.errors import DecodeError
    data = open(sys.argv[1], "rb").read()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        decode(data)
        outcome = "decoded"
    except DecodeError as exc:
        outcome = "DecodeError: " + str(exc)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    print(json.dumps({"peak": peak, "rss": rss, "seconds": seconds, "outcome": outcome}))
""")


def measure(frame: bytes, tmp_path, name: str) -> dict[str, object]:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(frame)
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                             text=True, timeout=120, check=True).stdout
    finally:
        path.unlink()
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def legit_peak(tmp_path_factory) -> int:
    """What a legitimate frame of max_frame costs: a Ping with a 16 MiB payload."""
    frame = encode(Ping(1, b"\x01" * (MAX - 16)))
    return int(measure(frame, tmp_path_factory.mktemp("legit"), "ping")["peak"])  # type: ignore[call-overload]


@pytest.mark.parametrize("name", list(bombs()))
def test_bomb_memory_is_bounded(name, tmp_path, legit_peak):
    frame = bombs()[name]()
    assert len(frame) <= MAX
    got = measure(frame, tmp_path, name)
    assert str(got["outcome"]).startswith("DecodeError"), got
    assert got["peak"] <= BOUND, got  # type: ignore[operator]
    assert got["rss"] <= BOUND, got  # type: ignore[operator]
    if len(frame) > 1 << 20:  # a large hostile frame costs no more than a Ping of that size
        assert got["peak"] <= legit_peak + (1 << 20), (got, legit_peak)  # type: ignore[operator]
        assert got["seconds"] < 1.0, got  # type: ignore[operator]


def test_the_issue_bomb_is_refused_on_its_first_bytes(tmp_path):
    got = measure(issue_bomb(), tmp_path, "issue")
    assert "expected [tag, fields...]" in str(got["outcome"])
    assert got["peak"] < 1 << 20 and got["seconds"] < 0.1, got  # type: ignore[operator]


def test_legitimate_large_frames_still_decode():
    """Bulk data rides in a Ping payload, or as bytes in a flat Command / Result / Event."""
    blob = bytes(range(256)) * (MAX // 512)
    for msg in (Ping(1, blob), Command(3, "bench.sink", {"payload": blob, "n": 1, "name": "x" * 100})):
        assert decode(encode(msg)) == msg
        assert decode(encode(msg) + bytes(100)) == msg  # fixed:N padding


@pytest.mark.parametrize(("frame", "words"), [
    (encode(Report(0.0, 1, {"rssi_dbm": -1.0, "blob": 0})), None),
    (msgpack.packb([7, 0.0, 1, {"a": list(range(70000))}, 0]), "larger than a Report may be"),
    (msgpack.packb([1, 1, "x" * 70000, "", "", ""]), "larger than a Hello may be"),
    (msgpack.packb([8, 1, "op", {"a": [0] * 300000}]), "must be flat"),
    (msgpack.packb([8, 1, "op", {str(i): b"x" * 5000 for i in range(65)}]), "at most 64 entries"),
    (msgpack.packb([8, 1, "op", {"s": "x" * 300000}]), "strings of at most"),
    (msgpack.packb([11, 0.0, [{"a": 1}] * 100000, []]), "larger than a Stats may be"),
    (msgpack.packb([5, 1, b"x" * 300000]) + b"junk", "trailing bytes"),
    (msgpack.packb([5, [1], b"x" * 300000]), "must be flat"),
    (b"\x93\x05\x01\xc6\x00\x10\x00\x00" + bytes(70000), "truncated"),
])
def test_shape_is_checked_before_building(frame, words):
    if words is None:
        decode(frame)
        return
    with pytest.raises(DecodeError, match=words.replace("[", r"\[")):
        decode(frame)
