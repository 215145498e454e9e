"""What one report costs, from the trace callback to bytes on the transport.

``python -m ns3_side.clientbench [--transports fifo,sysv,tcp] [--count 20000]``

For each transport a real ``ipcgw serve`` is started, a SimClient connects, and
the C++ ``Burst`` calls a hook's ``Offer`` (what a trace source's callback
does) ``count`` times in a row: C++ -> Python closure -> Report -> msgpack ->
framing -> transport write. Three numbers per transport:

- ``us/report``: median over bursts of 200 (which fit in the transport's
  buffer, so the server never pushes back): the simulation's cost per report;
- ``reports/s``: count / (a burst of ``count`` + a final Ping round trip),
  i.e. until the server has read and handled every report (sustained rate,
  limited by the server on this 2-core machine);
- the same hop without a transport (``null``: C++ -> Python -> Report ->
  encode, no send) and with a no-op Python callback (``hop``), for the split.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ipcgw import messages
from ipcgw.messages import Report
from ipcgw.testing import ServerProcess


@contextmanager
def _server(url: str, log_dir: str) -> Iterator[str]:
    """A real server (the default handler, as ``ipcgw serve`` alone would pick), quiet."""
    with ServerProcess([url], log_dir=log_dir, verbose=False, extra=["--handler", "auto"]) as server:
        yield server.url


def _url(transport: str, tmp: str) -> str:
    tag = os.urandom(4).hex()
    return {
        "fifo": f"fifo://{tmp}/bench-{tag}",
        "sysv": f"sysv://{0x20000000 + int(tag, 16) % 0x5FFFFFFF:#x}",
        "posixmq": f"posixmq:///ipcgwbench{tag}",
        "tcp": "tcp://127.0.0.1:0",
        "unix": f"unix://{tmp}/bench-{tag}.sock",
    }[transport]


def _burst(cpp: Any, emitter: Any, count: int) -> float:
    start = time.perf_counter()
    cpp.Burst(emitter, count)
    return time.perf_counter() - start


def measure_local(count: int) -> dict[str, float]:
    """The hop into Python alone, and hop + Report + encode (no transport)."""
    from ns3_side._cpp import load

    _, cpp = load()
    emitter = cpp.Emitter()
    emitter.fn = lambda t, a, b: None
    hop = _burst(cpp, emitter, count) / count
    encode = messages.encode
    emitter.fn = lambda t, a, b: encode(Report(t, 2, {"rssi_dbm": a, "snr_db": b}, 1))
    null = _burst(cpp, emitter, count) / count
    emitter.Stop()
    return {"hop_us": hop * 1e6, "null_us": null * 1e6}


def measure(transport: str, count: int, tmp: str) -> dict[str, float]:
    import ns3_side
    from ns3_side.hooks import Hook

    with _server(_url(transport, tmp), tmp) as url, ns3_side.SimClient(url, name="bench") as gw:
        emitter = gw.cpp.Emitter()
        Hook(gw, emitter, 2, 1, lambda a, b: {"rssi_dbm": a, "snr_db": b})
        _burst(gw.cpp, emitter, 200)  # warm up
        gw.client.ping(b"", timeout=60)
        # Small bursts that fit the transport's buffer: the cost to the simulation
        # when the server keeps up (no back-pressure), median of 30.
        small = []
        for _ in range(30):
            small.append(_burst(gw.cpp, emitter, 200) / 200)
            gw.client.ping(b"", timeout=60)
        small.sort()
        start = time.perf_counter()
        _burst(gw.cpp, emitter, count)
        gw.client.ping(b"", timeout=60)
        total = time.perf_counter() - start
        gw.check()
    return {"report_us": small[len(small) // 2] * 1e6, "reports_per_s": count / total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transports", default="fifo,sysv,posixmq,tcp,unix")
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args(argv)
    local = measure_local(args.count)
    print(f"hop C++->Python (no-op):        {local['hop_us']:6.2f} us/report")
    print(f"hop + Report + msgpack (null):  {local['null_us']:6.2f} us/report")
    with tempfile.TemporaryDirectory(prefix="ns3bench") as tmp:
        for transport in args.transports.split(","):
            r = measure(transport, args.count, tmp)
            print(f"{transport:8} {r['report_us']:6.2f} us/report (200-report bursts)   "
                  f"sustained {r['reports_per_s']:9,.0f} reports/s (until the server read all)")


if __name__ == "__main__":
    main()
