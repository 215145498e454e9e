from __future__ import annotations

import math
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipcgw import messages, sspi
from ipcgw.codecs import CODECS, get_codec
from ipcgw.errors import CodecError, DecodeError
from ipcgw.messages import (
    Bye,
    Command,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    Report,
    Result,
    Stats,
    Welcome,
    decode,
    encode,
)

EXAMPLES = [
    Hello(1, "length:4", "msgpack", "ns3"),
    Welcome(1, 7, "ipcgw 0.1"),
    Error("version mismatch", 3),
    Bye("done"),
    Ping(1, b"\x00payload"),
    Pong(1, b""),
    Report(12.25, 2, {"rssi_dbm": -81.5, "link_up": True, "loss": 0.01}, node_id=4),
    Command(9, "endpoint.set_flags", {"id": 2, "backup": True}),
    Result(9, False, None, "address with id 9 not found"),
    Event("SUB_ESTABLISHED", {"token": 0xDEADBEEF, "saddr4": "10.0.1.1"}, 1.5),
    Stats(3.0, [{"token": 1}], [{"rtt_us": 40000, "bytes_acked": 1 << 40}]),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_every_type(msg):
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_fixed_framing_padding_is_ignored(msg):
    assert decode(encode(msg) + bytes(40)) == msg


def test_every_message_type_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(messages.MESSAGE_TYPES)


@given(
    st.floats(allow_nan=False),
    st.integers(min_value=0, max_value=2**32),
    st.dictionaries(st.text(max_size=10), st.floats(allow_nan=False) | st.integers(-1000, 1000)),
)
def test_report_round_trip_property(t, path, metrics):
    msg = Report(t, path, metrics)
    assert decode(encode(msg)) == msg


def test_nan_metric_survives():
    out = decode(encode(Report(0.0, 1, {"rssi_dbm": math.nan})))
    assert math.isnan(out.metrics["rssi_dbm"])


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\xc1", "not valid msgpack"),  # 0xc1 is never used
        (b"\x92\x05", "not valid msgpack"),  # truncated array
        (msgpack.packb({"a": 1}), "expected [tag"),
        (msgpack.packb([99, 1]), "unknown message type tag 99"),
        (msgpack.packb([5, 1]), "Ping needs 2 fields"),
        (msgpack.packb([5, "x", b""]), "Ping.seq must be int"),
        (msgpack.packb([5, True, b""]), "Ping.seq must be int"),
        (msgpack.packb([7, 1.0, 1, {1: 2}, 0]), "map keys must be strings"),
        (msgpack.packb([7, "t", 1, {}, 0]), "Report.sim_time"),
        (msgpack.packb([5, 1, b""]) + b"junk", "trailing bytes"),
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),  # array32 of 4G items, 5 bytes
        (b"\xdf\x7f\xff\xff\xff", "not valid msgpack"),  # map32 of 2G items
        (b"\xdb\x7f\xff\xff\xff", "not valid msgpack"),  # str32 of 2 GiB
    ],
)
def test_malformed_frames_give_decode_error(data, words):
    with pytest.raises(DecodeError, match=words.replace("[", r"\[")):
        decode(data)


def test_encode_refuses_non_messages_and_unpackable_values():
    with pytest.raises(CodecError):
        encode("hello")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        encode(Report(0.0, 1, {"x": object()}))


# ---------------------------------------------------------------- sspi


def test_sspi_reads_what_a_c_program_writes():
    assert sspi.decode(struct.pack("=ii", 2, 2)) == Command(
        0, "endpoint.set_flags", {"id": 2, "backup": True}
    )
    assert sspi.decode(struct.pack("=ii", 3, 2)) == Command(
        0, "endpoint.set_flags", {"id": 2, "backup": False}
    )
    assert sspi.decode(struct.pack("=ii", 1, 5)) == Command(0, "endpoint.delete", {"id": 5})
    assert sspi.decode(struct.pack("=ii", 4, -7)) == Report(0.0, 0, {"snr_db": -7})
    assert sspi.decode(struct.pack("=ii", 5, 0)) == Bye("sspi END")
    assert sspi.decode(struct.pack("=ii", 6, 10)).op == "run.iperf"
    assert sspi.decode(struct.pack("=ii", 0, 1)).op == "run.tcpdump"


@pytest.mark.parametrize("kind", list(sspi.SspiType))
def test_sspi_round_trip(kind):
    record = struct.pack("=ii", kind, 3)
    value = 0 if kind == sspi.SspiType.END else 3
    assert sspi.encode(sspi.decode(record)) == struct.pack("=ii", kind, value)


@pytest.mark.parametrize("data", [b"", b"\x01\x00\x00", struct.pack("=ii", 2, 2) + b"x"])
def test_sspi_wrong_size(data):
    with pytest.raises(DecodeError, match="sspi record"):
        sspi.decode(data)


def test_sspi_unknown_type_names_the_value():
    with pytest.raises(DecodeError, match="unknown sspi command type 42"):
        sspi.decode(struct.pack("=ii", 42, 1))


def test_sspi_cannot_express_ping():
    with pytest.raises(CodecError, match="cannot express"):
        sspi.encode(Ping(1, b""))


def test_codec_registry():
    assert get_codec("sspi").handshake is False
    assert get_codec("msgpack").decode(encode(Bye())) == Bye()
    with pytest.raises(ValueError, match="known: msgpack, json, sspi, sspi2"):
        get_codec("xml")


def test_legacy_codecs_say_so():
    """Transports pick the legacy one-way FIFO path on this attribute, not on a codec name."""
    assert {n for n, c in CODECS.items() if c.legacy_oneway} == {"sspi", "sspi2"}
    assert all(not c.handshake and not c.replies for c in CODECS.values() if c.legacy_oneway)


# ---------------------------------------------------------------- Report metrics (#14.6)


@pytest.mark.parametrize(("metrics", "words"), [
    ({"rssi_dbm": "abc"}, "metric 'rssi_dbm' must be a number, got str 'abc'"),
    ({"rssi_dbm": True}, "metric 'rssi_dbm' must be a number, got bool"),
    ({"link_up": "yes"}, "metric 'link_up' must be a boolean"),
    ({"snr_db": None}, "metric 'snr_db' must be a number, got NoneType"),
    ({"snr_db": [1]}, "metric 'snr_db'"),
    ({"snr_db": {"a": 1}}, "metric 'snr_db'"),
    ({"x": b"\x00"}, "metric 'x'"),
])
def test_report_metrics_must_be_numbers_on_both_sides(metrics, words):
    msg = Report(1.0, 2, metrics)
    with pytest.raises(CodecError, match=words):
        encode(msg)  # the client
    raw = msgpack.packb([7, 1.0, 2, metrics, 0], use_bin_type=True)
    with pytest.raises(DecodeError, match=words):
        decode(raw)  # the server, from a client that did not check


def test_report_metrics_numbers_and_link_up_pass():
    msg = Report(1.0, 2, {"rssi_dbm": -80, "snr_db": 20.5, "link_up": False, "loss": math.inf})
    assert decode(encode(msg)) == msg


def test_report_metric_count_is_bounded():
    many = {f"m{i}": 1 for i in range(messages.MAX_METRICS + 1)}
    with pytest.raises(CodecError, match="at most"):
        encode(Report(0.0, 1, many))
    with pytest.raises(DecodeError):
        decode(msgpack.packb([7, 0.0, 1, many, 0]))


# ---------------------------------------------------------------- bulk bins

BIG = bytes(range(256)) * 1024  # 256 KiB: a bulk bin in a bulk frame of every kind


@pytest.mark.parametrize("msg", [
    Ping(7, BIG), Pong(8, bytearray(BIG)), Ping(9, memoryview(BIG)[1:]),
    Command(3, "bench.sink", {"payload": BIG, "n": 1, "tag": "x", "also": BIG[:40000]}),
    Result(4, True, BIG, ""), Result(5, True, {"blob": BIG, "ok": True}, ""),
    Event("SUB_ESTABLISHED", {"dump": BIG}, 1.5),
], ids=lambda m: type(m).__name__)
def test_encode_parts_is_encode_with_each_bulk_bin_left_as_the_callers_buffer(msg) -> None:
    parts = messages.encode_parts(msg)
    assert isinstance(parts, list) and b"".join(parts) == encode(msg)
    bulk = [p for p in parts if len(p) >= messages.BULK_BIN]
    field = getattr(msg, "payload", None) or getattr(msg, "args", None) or getattr(
        msg, "value", None) or msg.attrs
    wanted = [field] if not isinstance(field, dict) else [
        v for v in field.values() if isinstance(v, bytes | bytearray | memoryview)]
    assert [id(p) for p in bulk] == [id(v) for v in wanted]  # the same objects: no copy


@pytest.mark.parametrize("msg", [Ping(1, b"x" * 100), Report(1.0, 1, {"rssi_dbm": -60.0}),
                                 Command(1, "limits.get", {}), Ping(2, BIG[:messages.BULK_BIN - 1])])
def test_encode_parts_of_a_message_without_bulk_bins_is_encode(msg) -> None:
    assert messages.encode_parts(msg) == encode(msg)


def test_a_bulk_bin_decodes_as_a_read_only_view_onto_the_frame() -> None:
    frame = bytearray(encode(Command(0, "bench.sink", {"payload": BIG, "small": b"abc",
                                                        "mid": BIG[:messages.BULK_BIN - 1]})))
    msg = decode(frame)
    payload = msg.args["payload"]
    assert type(payload) is memoryview and payload.readonly and payload.obj is frame
    assert payload == BIG
    assert type(msg.args["small"]) is bytes and type(msg.args["mid"]) is bytes  # below BULK_BIN
    assert type(decode(encode(Ping(1, BIG[:1000]))).payload) is bytes  # a small frame: bytes


@pytest.mark.parametrize(("frame", "words"), [
    (encode(Ping(1, BIG)) + b"\x01\x02", "2 trailing bytes after the message"),
    (b"\x94\x08\x00\xa1x\x81\xc6" + len(BIG).to_bytes(4, "big") + BIG + b"\x01",
     "a map key cannot be a bulk bin"),
    (encode(Ping(1, BIG))[:-10], "truncated"),
])
def test_a_bulk_frame_of_the_wrong_shape_is_refused_with_its_words(frame, words) -> None:
    with pytest.raises(DecodeError, match=words):
        decode(bytearray(frame))


def test_a_bulk_frame_padded_with_nul_still_decodes() -> None:
    """fixed:N framing pads with NUL; a bulk frame keeps tolerating that."""
    assert decode(encode(Ping(1, BIG)) + bytes(100)) == Ping(1, BIG)
