"""The shm p50 target, measured in interleaved rounds rather than one case after another.

Why: on this kind of VM the CPU's speed drifts in phases that last seconds
to minutes (measured: a fixed Python loop took 6.2 us in one minute and
9.2 us in the next, and shm's round trip moved from 5.5 to 8.7 us with it).
A ratio of two cases taken a minute apart then measures the drift as much as
the transports. Here every transport gets a short slice in each round, the
order rotating, and the figure is the median over rounds of the per-round
ratio (shm against the best syscall transport of that round), so a phase
hits both sides of each ratio alike. Same clients, servers, placement and
message as the main table: ``Client.ping`` of 64 B through the run's own
``ipcgw serve`` processes, framing length:4, client on the cross CPU.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from .measure import latency_loop
from .servers import SYSCALL_TRANSPORTS, BenchServer
from .system import pin_self

__all__ = ["interleaved_p50"]


def interleaved_p50(servers: dict[str, BenchServer], client_cpu: int, rounds: int = 7,
                    slice_s: float = 0.2, size: int = 64) -> dict[str, Any]:
    """Per-round p50s (us) of every transport in ``servers`` (shm and the syscall
    ones), and the median per-round ratio best-syscall / shm."""
    import ipcgw

    pin_self(client_cpu)
    payload = os.urandom(size)
    names = sorted(servers)
    clients = {t: ipcgw.connect(servers[t].url, timeout=10.0, name="ipcgw-bench-ab") for t in names}
    p50s: dict[str, list[float]] = {t: [] for t in names}
    try:
        for client in clients.values():
            for _ in range(200):
                client.ping(payload)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for t in order:
                ping = clients[t].ping
                for _ in range(50):  # back on this transport: wake its server's spin/caches
                    ping(payload)
                hist = latency_loop(ping, payload, slice_s)
                p50s[t].append(hist.percentile(50) / 1000)
    finally:
        for client in clients.values():
            client.close()
        pin_self(None)
    syscall = [t for t in names if t in SYSCALL_TRANSPORTS]
    ratios, best_names = [], []
    for r in range(rounds):
        best = min(syscall, key=lambda t: p50s[t][r])
        best_names.append(best)
        ratios.append(p50s[best][r] / p50s["shm"][r])
    return {
        "rounds": rounds, "slice_s": slice_s, "size": size,
        "p50_us": {t: [round(v, 2) for v in p50s[t]] for t in names},
        "median_p50_us": {t: round(statistics.median(p50s[t]), 2) for t in names},
        "best_per_round": best_names,
        "ratios": [round(x, 3) for x in ratios],
        "ratio": round(statistics.median(ratios), 3),
    }
