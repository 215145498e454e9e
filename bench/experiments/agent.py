"""The programs a cell runs inside the namespaces: ``python -m ipcgw_bench.experiments.agent MODE``.

Separate processes (started with ``ip netns exec``) rather than threads of
the runner, so a cell that hangs or dies is killed by pid and recorded as
failed without taking the runner with it, as an unmodified application
would be. Each prints ``{"ready": true}`` once listening and one JSON result
line at the end; times are ``CLOCK_MONOTONIC``, which all namespaces share,
so a sender's and a receiver's timestamps can be subtracted.

Modes: ``serve-file`` / ``fetch-file`` (download of N bytes; the client
checks count and SHA-256), ``serve-video`` / ``fetch-video`` (frames at a
constant rate), ``report`` (stands in for the simulation on the veth
testbed: an RSSI trace of a station walking away, sent as gateway Reports).
The sender reads its own subflows' kernel counters (sock_diag through
:class:`ipcgw.mptcp.metrics.MetricsReader`) after the receiver has
acknowledged everything and before closing, when they are final.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import random
import socket
import struct
import sys
import time
from typing import Any

IPPROTO_MPTCP = 262
TCP_CONGESTION = 13
FRAME_HEADER = struct.Struct("!IId")  # index, size (header included), scheduled send time
CHUNK = 1 << 16


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def payload(size: int, seed: int) -> bytes:
    """Incompressible, reproducible bytes: the receiver's checksum is known in advance."""
    block = random.Random(seed).randbytes(min(size, 1 << 20))
    reps = -(-size // max(1, len(block)))
    return (block * reps)[:size]


def _mptcp_socket(cc: str | None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    if cc:
        # else the namespace default (reno/bbr) stays
        with contextlib.suppress(OSError):
            s.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, cc.encode())
    return s


def _listen(port: int, cc: str | None) -> socket.socket:
    srv = _mptcp_socket(cc)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    _emit(ready=True)
    return srv


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def kernel_stats(port: int) -> dict[str, Any]:
    """This connection's MPTCP info and subflows (tcp_info), tied by the MPTCP token."""
    from ipcgw.mptcp.metrics import MetricsReader

    keep = ("saddr", "sport", "daddr", "dport", "backup", "peer_backup", "bytes_sent",
            "bytes_acked", "bytes_received", "bytes_retrans", "total_retrans", "lost",
            "rtt", "min_rtt", "cwnd", "delivery_rate", "segs_out", "loc_id", "rem_id")
    with MetricsReader(families=(socket.AF_INET,)) as reader:
        conns = [c for c in reader.connections() if c.get("sport") == port]
        if not conns:
            return {"error": "connection not found in sock_diag"}
        conn = conns[-1]
        subflows = reader.subflows(conn.get("token"))
    return {"connection": {k: conn.get(k) for k in ("token", "subflows", "retransmits",
                                                    "bytes_retrans", "bytes_sent")},
            "subflows": [{k: sf.get(k) for k in keep} for sf in subflows]}


def serve_file(args: argparse.Namespace) -> None:
    data = payload(args.size, args.seed)
    with _listen(args.port, args.cc) as srv:
        conn, _ = srv.accept()
        with conn:
            t_first = time.monotonic()
            view = memoryview(data)
            for off in range(0, len(data), CHUNK):
                conn.sendall(view[off:off + CHUNK])
            digest = _recv_exact(conn, 32)  # the client's SHA-256: everything arrived
            stats = kernel_stats(args.port)
            _emit(t_first_sent=t_first, sent=len(data),
                  sha256=hashlib.sha256(data).hexdigest(),
                  peer_sha256=digest.hex(), **stats)


def fetch_file(args: argparse.Namespace) -> None:
    sock = _mptcp_socket(args.cc)
    sock.settimeout(args.timeout)
    sock.connect((args.addr, args.port))
    h = hashlib.sha256()
    got = 0
    t_first = t_last = math.nan
    buf = bytearray(CHUNK)
    with sock:
        while got < args.size:
            n = sock.recv_into(buf)
            if n == 0:
                break
            if got == 0:
                t_first = time.monotonic()
            got += n
            t_last = time.monotonic()
            h.update(memoryview(buf)[:n])
        digest = h.digest()
        sock.sendall(digest)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            sock.recv(1)  # the server closes after reading its stats
    _emit(received=got, sha256=digest.hex(), t_first_recv=t_first, t_last_recv=t_last)


def serve_video(args: argparse.Namespace) -> None:
    from .video import frame_sizes

    sizes = frame_sizes(args.bitrate, args.fps, args.duration, args.seed)
    filler = payload(max(sizes), args.seed)
    with _listen(args.port, args.cc) as srv:
        conn, _ = srv.accept()
        with conn:
            t0 = time.monotonic() + 0.05
            late_sends = 0
            for i, size in enumerate(sizes):
                due = t0 + i / args.fps
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late_sends += 1  # the socket buffer was full: already a symptom
                conn.sendall(FRAME_HEADER.pack(i, size, due)
                             + filler[:size - FRAME_HEADER.size])
            _recv_exact(conn, 1)
            stats = kernel_stats(args.port)
            _emit(t_first_sent=t0, frames=len(sizes), sent=sum(sizes), late_sends=late_sends,
                  **stats)


def fetch_video(args: argparse.Namespace) -> None:
    sock = _mptcp_socket(args.cc)
    sock.settimeout(args.timeout)
    sock.connect((args.addr, args.port))
    arrivals: list[float | None] = []
    t0 = math.nan
    got = 0
    with sock:
        try:
            while True:
                head = _recv_exact(sock, FRAME_HEADER.size)
                index, size, due = FRAME_HEADER.unpack(head)
                if index == 0:
                    t0 = due
                _recv_exact(sock, size - FRAME_HEADER.size)
                got += size
                arrivals += [None] * (index - len(arrivals))
                arrivals.append(time.monotonic())
                if index + 1 >= args.frames:
                    break
        except (ConnectionError, TimeoutError) as exc:
            _emit(error=str(exc), arrivals=arrivals, t0=t0, received=got)
            return
        sock.sendall(b"k")
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            sock.recv(1)
    _emit(arrivals=arrivals, t0=t0, received=got)


def rssi_at(t: float, start_m: float, speed_mps: float, tx_power_dbm: float = 16.0) -> float:
    """ns-3's default WiFi propagation (log-distance, exponent 3, 46.6777 dB at 1 m):
    the same RSSI for the same distance as the NS-3 data plane's station."""
    d = max(1.0, start_m + speed_mps * t)
    return tx_power_dbm - 46.6777 - 30.0 * math.log10(d)


def report(args: argparse.Namespace) -> None:
    """RSSI reports as the simulation would send them, on the clock the runner set."""
    from ipcgw.client import connect
    from ipcgw.messages import Report

    rng = random.Random(args.seed)
    sent = 0
    with connect(args.url, timeout=10, name="experiment-reporter") as client:
        _emit(ready=True)
        period = args.interval_ms / 1000
        k = max(0, math.ceil((time.monotonic() - args.start) / period))
        while True:
            t = k * period
            if t > args.duration:
                break
            delay = args.start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rssi = rssi_at(t, args.start_m, args.speed) + rng.gauss(0, args.noise_db)
            client.send(Report(t, args.path, {"rssi_dbm": round(rssi, 2)}))
            sent += 1
            k += 1
        client.ping(b"", 5)  # every report was read before we say bye
    _emit(reports=sent)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ipcgw_bench.experiments.agent")
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("serve-file", "serve-video"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--cc")
        if name == "serve-file":
            s.add_argument("--size", type=int, required=True)
        else:
            s.add_argument("--bitrate", type=float, required=True)
            s.add_argument("--fps", type=float, required=True)
            s.add_argument("--duration", type=float, required=True)
    for name in ("fetch-file", "fetch-video"):
        s = sub.add_parser(name)
        s.add_argument("--addr", required=True)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--timeout", type=float, default=30)
        s.add_argument("--cc")
        if name == "fetch-file":
            s.add_argument("--size", type=int, required=True)
        else:
            s.add_argument("--frames", type=int, required=True)
    s = sub.add_parser("report")
    s.add_argument("--url", required=True)
    s.add_argument("--start", type=float, required=True, help="CLOCK_MONOTONIC of sim time 0")
    s.add_argument("--start-m", type=float, required=True)
    s.add_argument("--speed", type=float, required=True)
    s.add_argument("--path", type=int, default=2)
    s.add_argument("--interval-ms", type=float, default=100)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--noise-db", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    {"serve-file": serve_file, "fetch-file": fetch_file, "serve-video": serve_video,
     "fetch-video": fetch_video, "report": report}[args.mode](args)


if __name__ == "__main__":
    main()
