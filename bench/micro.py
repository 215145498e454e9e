"""Framing and codec micro-bench: no transport, no second process.

Separates what the layers cost from what the OS costs: if a framing decodes
64 KiB frames at 200 MB/s it, not the pipe, caps the transport at 1 MiB.
Decoders are fed a long stream cut into 64 KiB reads, as a transport would
deliver it (so frames straddle reads, the case that costs buffering).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FEED_CHUNK", "run_micro"]

FEED_CHUNK = 64 * 1024
SIZES = (64, 64 * 1024)


def _rate(fn: Callable[[], int], budget: float) -> tuple[float, float]:
    """(calls per second, units per second) where fn returns units done per call."""
    fn()  # warm
    clock = time.perf_counter
    units, calls = 0, 0
    start = clock()
    end = start + budget
    while True:
        units += fn()
        calls += 1
        now = clock()
        if now >= end:
            return calls / (now - start), units / (now - start)


def _payload(spec: str, size: int) -> bytes:
    data = os.urandom(size)
    if spec == "delimited:lf":
        data = data.replace(b"\n", b"x")  # lf framing carries text only
    return data


def _framing(spec: str, size: int, budget: float) -> list[dict[str, Any]]:
    from ipcgw.framing import make_framer

    framer = make_framer(f"fixed:{size}" if spec == "fixed" else spec)
    payload = _payload(spec, size)
    name = "fixed:N" if spec == "fixed" else spec
    encode = framer.encode
    _, enc_rate = _rate(lambda: (encode(payload), 1)[1], budget)
    frame = encode(payload)
    per_stream = max(1, (1 << 20) // len(frame))
    stream = frame * per_stream
    chunks = [stream[i : i + FEED_CHUNK] for i in range(0, len(stream), FEED_CHUNK)]

    def decode_stream() -> int:
        decoder = framer.decoder()
        n = 0
        for chunk in chunks:
            n += len(decoder.feed(chunk))
        if n != per_stream:
            raise AssertionError(f"{name}: decoded {n} frames of {per_stream}")
        return n

    _, dec_rate = _rate(decode_stream, budget)
    out = []
    for op, rate in (("encode", enc_rate), ("decode", dec_rate)):
        out.append({"layer": "framing", "name": name, "op": op, "size": size,
                    "per_s": round(rate, 1), "mb_per_s": round(rate * size / 1e6, 2),
                    "wire_overhead": len(frame) - size})
    return out


def _one_call(fn: Callable[[Any], object], arg: Any) -> Callable[[], int]:
    """``fn(arg)`` as a ``_rate`` unit: one call."""

    def call() -> int:
        fn(arg)
        return 1

    return call


def _codec(budget: float) -> list[dict[str, Any]]:
    from ipcgw import messages, sspi

    samples: list[tuple[str, str, Any, int, Callable[[Any], bytes], Callable[[bytes], Any]]] = []
    for size in SIZES:
        samples.append(("msgpack", "Ping", messages.Ping(7, os.urandom(size)), size,
                        messages.encode, messages.decode))
    report = messages.Report(12.5, 2, {"rssi_dbm": -71.5, "snr_db": 23.0, "rtt_ms": 41.2,
                                       "loss": 0.01, "link_up": True}, 3)
    samples.append(("msgpack", "Report(5 metrics)", report, len(messages.encode(report)),
                    messages.encode, messages.decode))
    cmd = messages.Command(0, "endpoint.set_flags", {"id": 2, "backup": True})
    samples.append(("sspi", "Command(set_flags)", cmd, 8, sspi.encode, sspi.decode))
    out = []
    for codec, what, msg, size, enc, dec in samples:
        data = enc(msg)
        _, enc_rate = _rate(_one_call(enc, msg), budget)
        _, dec_rate = _rate(_one_call(dec, data), budget)
        for op, rate in (("encode", enc_rate), ("decode", dec_rate)):
            out.append({"layer": "codec", "name": f"{codec} {what}", "op": op, "size": size,
                        "per_s": round(rate, 1), "mb_per_s": round(rate * size / 1e6, 2),
                        "wire_overhead": len(data) - size if what == "Ping" else None})
    return out


def run_micro(budget: float = 0.3) -> list[dict[str, Any]]:
    """Rates of every framing (64 B and 64 KiB payloads) and of the codecs."""
    out: list[dict[str, Any]] = []
    for spec in ("length:4", "delimited:nul", "delimited:lf", "fixed"):
        for size in SIZES:
            out += _framing(spec, size, budget)
    out += _codec(budget)
    return out


if __name__ == "__main__":
    for row in run_micro(0.2):
        print(row)
