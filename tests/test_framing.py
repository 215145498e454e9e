"""One contract, run over every framing: any payloads, any chunking, same frames."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcgw import framing
from ipcgw.framing import (
    FrameTooLarge,
    FramingError,
    cobs_decode,
    cobs_encode,
    make_framer,
)

MAX = 600  # small max_frame so limits are cheap to hit
STREAM_SPECS = ["length:1", "length:2", "length:4", "length:8", "delimited:nul", "delimited:lf"]
ALL_SPECS = [*STREAM_SPECS, "fixed:8", "fixed:300"]


def payloads_for(spec: str) -> st.SearchStrategy[bytes]:
    limit = min(MAX, 255) if spec == "length:1" else MAX
    if spec == "delimited:lf":
        return st.binary(max_size=limit).map(lambda b: b.replace(b"\n", b"x"))
    if spec.startswith("fixed:"):
        size = int(spec.split(":")[1])
        # fixed frames keep their padding: use payloads that end in a non-NUL
        return st.binary(max_size=size - 1).map(lambda b: b + b"\x01")
    return st.binary(max_size=limit)


def expected(spec: str, payload: bytes) -> bytes:
    if spec.startswith("fixed:"):
        size = int(spec.split(":")[1])
        return payload.ljust(size, b"\0")
    return payload


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@pytest.mark.parametrize("spec", ALL_SPECS)
@settings(max_examples=150, deadline=None)
@given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_any_payloads_any_chunking_round_trip(spec: str, data: st.DataObject, cuts: list[int]):
    framer = make_framer(spec, max_frame=MAX)
    payloads = data.draw(st.lists(payloads_for(spec), max_size=12))
    stream = b"".join(framer.encode(p) for p in payloads)
    decoder = framer.decoder()
    frames = []
    for chunk in chunked(stream, cuts):
        frames += decoder.feed(chunk)
    assert frames == [expected(spec, p) for p in payloads]
    assert decoder.pending == 0


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_byte_by_byte_and_trailing_partial(spec: str):
    framer = make_framer(spec, max_frame=MAX)
    payloads = [b"\0\n\0", b"", b"abc\0", bytes(range(1, 200))]
    if spec == "delimited:lf":
        payloads = [p.replace(b"\n", b"-") for p in payloads]
    if spec.startswith("fixed:"):
        payloads = [p[: int(spec[6:]) - 1] + b"!" for p in payloads]
    stream = b"".join(framer.encode(p) for p in payloads)
    partial = framer.encode(b"zz" + b"y" * 5)
    decoder = framer.decoder()
    frames = [f for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
    assert frames == [expected(spec, p) for p in payloads]
    assert decoder.feed(partial[:-1]) == []
    assert decoder.pending == len(partial) - 1


@pytest.mark.parametrize("spec", STREAM_SPECS)
def test_max_frame_exactly_passes_one_over_fails_on_both_sides(spec: str):
    limit = 255 if spec == "length:1" else MAX
    framer = make_framer(spec, max_frame=limit)
    at_limit = b"\x01" * limit
    assert framer.decoder().feed(framer.encode(at_limit)) == [at_limit]
    with pytest.raises(FrameTooLarge) as info:
        framer.encode(at_limit + b"\x01")
    assert info.value.size == limit + 1
    # Build the oversize frame with a framer that allows it; the strict one must refuse it.
    loose = make_framer(spec, max_frame=limit * 2)
    over = loose.encode(at_limit + b"\x01") if spec != "length:1" else b"\xff" + b"\x01" * 255
    decoder = framer.decoder()
    if spec == "length:1":
        # a 1-byte header cannot say more than 255: the limit is the header itself
        assert decoder.feed(over) == [b"\x01" * 255]
        return
    with pytest.raises(FrameTooLarge):
        for i in range(len(over)):
            decoder.feed(over[i : i + 1])


def test_length_limit_is_checked_when_the_header_arrives():
    decoder = make_framer("length:4", max_frame=1000).decoder()
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed((2**31).to_bytes(4, "big"))  # no payload byte needed to refuse
    assert info.value.size == 2**31 and info.value.max_size == 1000


@pytest.mark.parametrize("spec", ["delimited:nul", "delimited:lf"])
def test_delimiter_missing_is_refused_before_memory_is_spent(spec: str):
    decoder = make_framer(spec, max_frame=1000).decoder()
    with pytest.raises(FrameTooLarge):
        for _ in range(100):
            decoder.feed(b"\x01" * 100)
    assert decoder.pending <= 1000 + 1000 // 254 + 1 + 100


def test_lf_refuses_payload_with_newline():
    with pytest.raises(FramingError):
        make_framer("delimited:lf").encode(b"a\nb")


def test_fixed_pads_and_refuses_longer():
    framer = make_framer("fixed:8")
    assert framer.encode(b"ab") == b"ab" + bytes(6)
    with pytest.raises(FrameTooLarge):
        framer.encode(b"123456789")


@pytest.mark.parametrize("spec", ["length:3", "length:x", "fixed:0", "fixed", "delimited:tab", "foo"])
def test_unknown_spec_names_valid_forms(spec: str):
    with pytest.raises(ValueError, match="valid forms"):
        make_framer(spec)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_cobs_round_trip_has_no_nul_and_bounded_overhead(payload: bytes):
    enc = cobs_encode(payload)
    assert b"\0" not in enc
    assert len(enc) <= len(payload) + len(payload) // 254 + 1 + payload.count(0) * 0 + 1
    assert cobs_decode(enc) == payload


@pytest.mark.parametrize("spec", ALL_SPECS)
@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_garbage_never_hangs_or_crashes(spec: str, garbage: bytes, cuts: list[int]):
    decoder = make_framer(spec, max_frame=MAX).decoder()
    try:
        for chunk in chunked(garbage, cuts):
            for frame in decoder.feed(chunk):
                assert isinstance(frame, bytes)
    except FramingError:
        pass


@pytest.mark.parametrize("bad", [b"\x00", b"\x05ab", b"\xff" + b"a" * 254])
def test_cobs_rejects_malformed(bad: bytes):
    with pytest.raises(FramingError):
        cobs_decode(bad)


def test_large_frames_many_chunks():
    framer = make_framer("length:4")
    payload = os.urandom(1 << 20)
    stream = framer.encode(payload) * 3
    decoder = framer.decoder()
    frames = []
    for i in range(0, len(stream), 65536):
        frames += decoder.feed(stream[i : i + 65536])
    assert frames == [payload] * 3


@settings(max_examples=200, deadline=None)
@given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=30),
       into=st.lists(st.booleans(), min_size=1, max_size=30))
def test_big_frames_read_into_their_own_buffer_give_the_same_frames(
        data: st.DataObject, cuts: list[int], into: list[bool]) -> None:
    """Large frames get their own buffer at the header; a reader may fill it in place
    (get_buffer / buffer_updated, what a socket's recv_into does) or keep feeding
    chunks: any mix, any chunking, the same frames and the same ``pending``."""
    old = framing.BIG_FRAME
    framing.BIG_FRAME = 40  # small, so hypothesis makes many big frames
    try:
        framer = make_framer("length:4", max_frame=MAX)
        payloads = data.draw(st.lists(st.binary(max_size=200), max_size=10))
        stream = b"".join(framer.encode(p) for p in payloads)
        decoder = framer.decoder()
        frames: list[bytes] = []
        fed = 0
        for k, chunk in enumerate(chunked(stream, cuts)):
            view = memoryview(chunk)
            while view:
                room = decoder.get_buffer()
                if room is not None and into[k % len(into)]:
                    n = min(len(room), len(view))
                    room[:n] = view[:n]
                    frames += decoder.buffer_updated(n)
                else:
                    n = len(view)
                    frames += decoder.feed(bytes(view))
                view, fed = view[n:], fed + n
                done = sum(len(f) + 4 for f in frames)
                assert decoder.pending == fed - done
        assert [bytes(f) for f in frames] == payloads
        assert decoder.pending == 0 and decoder.get_buffer() is None
    finally:
        framing.BIG_FRAME = old


def test_a_big_frame_split_across_reads_lands_in_one_buffer_read_into_in_place() -> None:
    framer = make_framer("length:4")
    payload = os.urandom(1 << 20)
    stream = framer.encode(payload)
    decoder = framer.decoder()
    assert decoder.feed(stream[:65536]) == []
    room = decoder.get_buffer()
    assert room is not None and len(room) == len(stream) - 65536  # exactly the rest
    room[:] = stream[65536:]
    (frame,) = decoder.buffer_updated(len(room))
    assert type(frame) is bytearray and frame == payload
    decoder.recycle(frame)  # decoded, but still held here: the next frame gets its own
    assert decoder.feed(stream[:100]) == [] and decoder.get_buffer() is not None
    assert decoder.feed(stream[100:]) == [frame] and decoder.pending == 0


def _big_frame(decoder, stream: bytes) -> bytearray:
    """One big frame through get_buffer/buffer_updated, as a stream transport reads it."""
    assert decoder.feed(stream[:100]) == []
    room = decoder.get_buffer()
    room[:] = stream[100:]
    (frame,) = decoder.buffer_updated(len(room))
    return frame


def test_a_big_frames_buffer_is_reused_only_once_nothing_holds_it() -> None:
    """A message decoded from a big frame may hold views onto it (bulk bins): its
    buffer must not carry a later frame until they are gone. Two spares are kept:
    a reader loop still holds the previous message while the next frame arrives."""
    framer = make_framer("length:4")
    streams = [framer.encode(bytes([i]) * (1 << 20)) for i in range(6)]
    decoder = framer.decoder()
    held = []
    for i in range(3):  # each held as a view, as a decoded payload holds it
        frame = _big_frame(decoder, streams[i])
        decoder.recycle(frame)
        held.append(memoryview(frame)[10:20])
        del frame
    assert len({id(v.obj) for v in held}) == 3  # no buffer carried two frames
    assert [bytes(v) for v in held] == [bytes([i]) * 10 for i in range(3)]
    ids = {id(v.obj) for v in held[1:]}  # the two spares kept: the last two frames'
    del held
    seen = []
    for i in range(3, 6):
        frame = _big_frame(decoder, streams[i])
        assert frame == bytes([i]) * (1 << 20)
        seen.append(id(frame))
        decoder.recycle(frame)
        del frame  # the loop drops each frame before the next: one buffer goes round
    assert seen[0] in ids and len(set(seen)) <= 2, (seen, ids)


def test_a_big_frame_is_refused_at_its_header_not_allocated() -> None:
    decoder = make_framer("length:4", max_frame=1 << 20).decoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed((2 << 20).to_bytes(4, "big") + b"x")
    assert decoder.get_buffer() is None  # nothing was allocated for it


# ---------------------------------------------------------------- COBS: C and its Python twin (#13.2)

COBS_PAIRS = [("python", framing.cobs_encode_py, framing.cobs_decode_py)]
if framing.COBS_IMPL == "c":
    COBS_PAIRS.append(("c", framing.cobs_encode, framing.cobs_decode))


def test_the_c_cobs_is_built_where_required():
    if os.environ.get("IPCGW_REQUIRE_COBS_C") == "1":
        assert framing.COBS_IMPL == "c", "ipcgw/_cobs.c was not built (pip install -e . with a C compiler)"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\0", b"\x01", b"\xff", b"ab"]) | st.binary(max_size=600), max_size=8))
def test_cobs_c_and_python_write_the_same_bytes(parts: list[bytes]):
    payload = b"".join(parts)
    encoded = framing.cobs_encode_py(payload)
    for _, enc, dec in COBS_PAIRS:
        assert enc(payload) == encoded
        assert dec(encoded) == payload
        assert dec(memoryview(bytearray(encoded))) == payload


@pytest.mark.parametrize("n", [0, 1, 253, 254, 255, 507, 508, 509, 100_000])
@pytest.mark.parametrize("fill", [b"\0", b"\x01", b"\x01\0"])
def test_cobs_block_boundaries(n: int, fill: bytes):
    payload = (fill * n)[:n]
    for _, enc, dec in COBS_PAIRS:
        encoded = enc(payload)
        assert b"\0" not in encoded and len(encoded) <= n + n // 254 + 1
        assert encoded == framing.cobs_encode_py(payload)
        assert dec(encoded) == payload


@pytest.mark.parametrize(("bad", "words"), [
    (b"", "empty"), (b"\x00", "code 0"), (b"\x05ab", "truncated"), (b"\xff" + b"a" * 254, "full block"),
    (b"\x01\x00\x02", "code 0"),
])
def test_cobs_both_refuse_malformed_with_the_same_words(bad: bytes, words: str):
    for _, _, dec in COBS_PAIRS:
        with pytest.raises(FramingError, match=words):
            dec(bad)


def _mb_per_s(fn, data: bytes) -> float:
    best = min(_timed(fn, data) for _ in range(3))
    return len(data) / best / 1e6


def _timed(fn, data: bytes) -> float:
    import time

    t0 = time.perf_counter()
    fn(data)
    return time.perf_counter() - t0


@pytest.mark.skipif(framing.COBS_IMPL != "c", reason="the C COBS is not built")
@pytest.mark.parametrize("kind", ["zeros", "no-zero"])
def test_cobs_worst_case_is_fast(kind: str):
    """Before: 16 MiB all-zero decode 5.5 MB/s (2.8 s), no-zero encode 0.7 MB/s. Target
    >= 200 MB/s; asserted at 100 to leave room for a loaded CI machine."""
    n = 16 << 20
    payload = bytes(n) if kind == "zeros" else b"\x01" * n
    encoded = framing.cobs_encode(payload)
    assert _mb_per_s(framing.cobs_encode, payload) >= 100
    assert _mb_per_s(framing.cobs_decode, encoded) >= 100


def test_cobs_python_twin_is_linear():
    """The twin re-sliced a zero-free piece 254 bytes at a time: 4x the input cost ~16x."""
    small, big = b"\x01" * (1 << 20), b"\x01" * (4 << 20)
    ratio = min(_timed(framing.cobs_encode_py, big) for _ in range(3)) / min(
        _timed(framing.cobs_encode_py, small) for _ in range(3))
    assert ratio < 8, ratio


@pytest.mark.skipif(framing.COBS_IMPL != "c", reason="the C COBS is not built")
def test_delimited_nul_frame_of_max_size_decodes_quickly():
    framer = make_framer("delimited:nul")
    payload = bytes(framer.max_frame)
    decoder = framer.decoder()
    assert decoder.feed(framer.encode(payload)) == [payload]
