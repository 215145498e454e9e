"""What real time costs: ``python -m ns3_side.lab.dpbench [RATE_MBIT ...] [--wifi]``.

Per total rate: two equal point-to-point paths (10 and 30 ms), one MPTCP
bulk transfer for ``--seconds``; prints the simulation process's CPU share
(its own ``process_time``, all threads), CPU % per Mbit/s carried, the
achieved rate and the worst lag behind real time (best-effort mode, so a
rate that cannot keep up shows a growing lag instead of dying). ``--wifi``
replaces path 2 by the WiFi path (fixed station at 10 m).

``--paced SPEC`` (e.g. ``lte``, ``lte:rb=6``, ``cell``): that one path alone and
one plain TCP flow client -> server paced by the kernel
(``SO_MAX_PACING_RATE``) at each rate, so the figure is that kind's own;
prints the idle cost too (an LTE eNB and UE run their 1 ms subframes whether
or not anything is sent).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from typing import Any

from ipcgw.netns import socket_in_netns
from ns3_side.lab.dataplane import DataPlane
from ns3_side.lab.paths import PathConfig, p2p, wifi
from ns3_side.lab.traffic import Bulk, PathSampler


def measure(total_mbit: float, seconds: float = 8.0, use_wifi: bool = False) -> dict[str, float]:
    paths: list[PathConfig] = [p2p(total_mbit / 2, 10), p2p(total_mbit / 2, 30)]
    if use_wifi:
        paths = [p2p(total_mbit, 10), wifi(10.0)]
    with DataPlane(paths, hard_limit_ms=0, heartbeat_s=30) as dp:
        sampler = PathSampler(dp.client, {dp.client_addr(1): 1, dp.client_addr(2): 2}).start()
        with Bulk(dp.client, dp.server, dp.server_addr(1)):
            time.sleep(2.0)
            first = dp.last
            time.sleep(seconds)
            last = dp.last
        sampler.stop()
        assert first is not None and last is not None
        rates = sampler.rate_between(2.0, 2.0 + seconds)
        cpu = (last["cpu"] - first["cpu"]) / max(last["wall"] - first["wall"], 1e-3)
        carried = sum(rates.values())
        lag = max(m["lag"] for m in dp.progress) - min(m["lag"] for m in dp.progress)
        return {"configured_mbit": total_mbit if not use_wifi else total_mbit + 12,
                "carried_mbit": round(carried, 2), "sim_cpu_pct": round(100 * cpu, 1),
                "cpu_pct_per_mbit": round(100 * cpu / max(carried, 1e-3), 3),
                "lag_growth_ms": round(1000 * lag, 1)}


SO_MAX_PACING_RATE = 47


def _cpu_share(a: dict[str, float], b: dict[str, float]) -> float:
    """The simulation process's CPU share between two progress lines."""
    return (b["cpu"] - a["cpu"]) / max(b["wall"] - a["wall"], 1e-3)


def measure_paced(path: PathConfig, rate_mbit: float, seconds: float = 8.0) -> dict[str, Any]:
    """CPU of one path carrying ``rate_mbit`` of paced TCP client -> server (LTE: uplink)."""
    with DataPlane([path], scenario=None, hard_limit_ms=0, heartbeat_s=30) as dp:
        time.sleep(1.0)
        idle0 = dp.last
        time.sleep(3.0)
        idle1 = dp.last
        assert idle0 is not None and idle1 is not None
        lsock = socket_in_netns(dp.server, socket.AF_INET, socket.SOCK_STREAM)
        cli = socket_in_netns(dp.client, socket.AF_INET, socket.SOCK_STREAM)
        got = [0]
        stop = threading.Event()
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(("0.0.0.0", 5202))
            lsock.listen(1)
            cli.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, int(rate_mbit * 1e6 / 8))
            cli.settimeout(10)
            cli.bind((dp.client_addr(1), 0))
            cli.connect((dp.server_addr(1), 5202))
            conn, _ = lsock.accept()

            def rx() -> None:
                with contextlib.suppress(OSError):
                    while data := conn.recv(1 << 16):
                        got[0] += len(data)

            def tx() -> None:
                chunk = b"x" * 16384
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        cli.sendall(chunk)

            threads = [threading.Thread(target=f, daemon=True) for f in (rx, tx)]
            for t in threads:
                t.start()
            time.sleep(2.0)
            first, n0 = dp.last, got[0]
            time.sleep(seconds)
            last, n1 = dp.last, got[0]
            stop.set()
        finally:
            cli.close()
            lsock.close()
        assert first is not None and last is not None
        carried = (n1 - n0) * 8 / 1e6 / max(last["wall"] - first["wall"], 1e-3)
        busy, idle = _cpu_share(first, last), _cpu_share(idle0, idle1)
        lag = max(m["lag"] for m in dp.progress) - min(m["lag"] for m in dp.progress)
        return {"path": path.kind, "paced_mbit": rate_mbit, "carried_mbit": round(carried, 2),
                "idle_cpu_pct": round(100 * idle, 1), "sim_cpu_pct": round(100 * busy, 1),
                "cpu_pct_per_mbit": round(100 * busy / max(carried, 1e-3), 3),
                "marginal_cpu_pct_per_mbit": round(100 * (busy - idle) / max(carried, 1e-3), 3),
                "lag_growth_ms": round(1000 * lag, 1),
                **({"rb": path.lte_rb, "rsrp_dbm": last["rsrp_dbm"].get("1"),
                    "sinr_db": last["sinr_db"].get("1")} if path.kind == "lte" else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rates", nargs="*", type=float, default=[10.0, 40.0, 100.0, 200.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--wifi", action="store_true")
    parser.add_argument("--paced", metavar="SPEC", help="one path (lte, cell, ...), paced TCP")
    args = parser.parse_args()
    for rate in args.rates:
        print(measure_paced(PathConfig.parse(args.paced), rate, args.seconds) if args.paced
              else measure(rate, args.seconds, args.wifi), flush=True)


if __name__ == "__main__":
    main()
