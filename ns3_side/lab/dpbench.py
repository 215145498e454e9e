"""What real time costs: ``python -m ns3_side.lab.dpbench [RATE_MBIT ...] [--wifi]``.

Per total rate: two equal point-to-point paths (10 and 30 ms), one MPTCP
bulk transfer for ``--seconds``; prints the simulation process's CPU share
(its own ``process_time``, all threads), CPU % per Mbit/s carried, the
achieved rate and the worst lag behind real time (best-effort mode, so a
rate that cannot keep up shows a growing lag instead of dying). ``--wifi``
replaces path 2 by the WiFi path (fixed station at 10 m).
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rates", nargs="*", type=float, default=[10.0, 40.0, 100.0, 200.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--wifi", action="store_true")
    args = parser.parse_args()
    for rate in args.rates:
        print(measure(rate, args.seconds, args.wifi), flush=True)


if __name__ == "__main__":
    main()
