"""The seed's handover experiment, end to end, on the NS-3 data plane.

Path 1 is the LTE stand-in (see :mod:`ns3_side.paths`), path 2 WiFi: the
station walks away from the AP. The simulation reports the station's RSSI
(``MonitorSnifferRx``, filtered) to ``ipcgw serve --handler mptcp --policy
ipcgw.mptcp.policy:RssiPolicy`` running *in the client namespace* over the
chosen transport; the policy sets the client's WLAN endpoint (id 2, scenario
1) to backup below -80 dBm. Meanwhile one MPTCP connection sends client ->
server as fast as it can. Without the policy (``policy=False``) the same
run is the baseline: the server gets the reports and does nothing.

Everything measured comes from where it happens: RSSI and distance from the
simulation, the endpoint's backup flag and per-path throughput from the
client kernel (``PathManager.endpoints()``, per-subflow ``tcp_info`` via
``ipcgw.mptcp.metrics``). Output folder: ``timeline.csv``, ``timeline.png``,
``summary.json``, ``config.json``, ``versions.json``, the server's and the
simulation's logs.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ns3_side.dataplane import ROOT, DataPlane, DataplaneError
from ns3_side.paths import PathConfig, lte, wifi
from ns3_side.traffic import Bulk, PathSampler

__all__ = ["HandoverConfig", "HandoverResult", "run"]

LTE, WLAN = 1, 2
WLAN_ENDPOINT = 2
POLICY = "ipcgw.mptcp.policy:RssiPolicy"
THRESHOLD_DBM = -80.0


@dataclass
class HandoverConfig:
    """Everything that defines a run (written to config.json as is)."""

    transport: str = "fifo"
    policy: bool = True
    duration: float = 40.0
    start_m: float = 30.0
    speed_mps: float = 2.0
    wifi_mode: str = "OfdmRate12Mbps"
    lte_rate_mbit: float = 10.0
    lte_delay_ms: float = 25.0
    report_alpha: float = 0.3
    report_interval_ms: float = 100.0
    sample_s: float = 0.5
    hard_limit_ms: float = 500.0
    seed: int = 1
    prefix: str | None = None

    def paths(self) -> list[PathConfig]:
        return [lte(self.lte_rate_mbit, self.lte_delay_ms),
                wifi(self.start_m, self.speed_mps, wifi_mode=self.wifi_mode)]


@dataclass
class HandoverResult:
    out: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def _url(transport: str, tmp: str, tag: str) -> str:
    urls = {
        "fifo": f"fifo://{tmp}/gw",
        "unix": f"unix://{tmp}/gw.sock",
        "tcp": "tcp://127.0.0.1:7700",  # inside the client namespace: never taken
        "sysv": f"sysv://0x{int(tag[:7], 16) | 0x10000000:x}",
        "posixmq": f"posixmq:///ipcgw-{tag}",
    }
    if transport not in urls:
        raise ValueError(f"transport must be one of {sorted(urls)}")
    return urls[transport]


class _Server:
    """``ipcgw serve`` in the client namespace; stopped with SIGTERM (it cleans up)."""

    def __init__(self, netns: str, url: str, policy: bool, log_path: Path) -> None:
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-P", "-m", "ipcgw", "-v", "serve",
               "--listen", url, "--handler", "mptcp"]
        if policy:
            cmd += ["--policy", POLICY]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT,
                                     env=env)
        self.log_path = log_path
        try:
            self.url = self._listening(30.0)
        except BaseException:
            self.stop()
            raise

    def _listening(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while b"listening on " not in buf or not buf.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                self._log.flush()
                raise DataplaneError(f"ipcgw serve did not start: "
                                     f"{self.log_path.read_text(errors='replace')[-800:]}")
            buf += chunk
        line = buf.split(b"listening on ", 1)[1].split(b"\n", 1)[0]
        return line.decode().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def versions() -> dict[str, Any]:
    """What produced the numbers: interpreter, kernel, packages, commit."""
    from importlib import metadata

    out: dict[str, Any] = {"python": sys.version.split()[0], "kernel": platform.release(),
                           "machine": platform.machine(), "cpus": os.cpu_count()}
    for pkg in ("ipcgw", "ns3", "cppyy", "pyroute2", "msgpack", "matplotlib", "click"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        out["git"] = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                    capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        out["git"] = None
    return out


def _cpu_share(progress: list[dict[str, Any]]) -> float:
    """CPU seconds per wall second of the simulation process since it started running."""
    if len(progress) < 2:
        return 0.0
    a, b = progress[0], progress[-1]
    return (b["cpu"] - a["cpu"]) / max(b["wall"] - a["wall"], 1e-3)


Printer = Callable[[str], None]


def run(cfg: HandoverConfig, out: Path, *, echo: Printer | None = print) -> HandoverResult:
    """Run one experiment into ``out``; everything it made is removed at the end."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {**asdict(cfg), "paths": [p.to_json() for p in cfg.paths()],
         "policy_spec": POLICY if cfg.policy else None, "threshold_dbm": THRESHOLD_DBM},
        indent=2))
    (out / "versions.json").write_text(json.dumps(versions(), indent=2))
    tag = uuid.uuid4().hex[:8]
    marks: list[tuple[float, dict[str, Any]]] = []  # (monotonic, sim progress)
    dp = DataPlane(cfg.paths(), prefix=cfg.prefix, scenario=1, duration=cfg.duration,
                   hard_limit_ms=cfg.hard_limit_ms, seed=cfg.seed, log_dir=out,
                   progress_s=min(0.25, cfg.sample_s),
                   on_progress=lambda m: marks.append((time.monotonic(), m)))
    server: _Server | None = None
    bulk: Bulk | None = None
    sampler: PathSampler | None = None
    tmp = tempfile.mkdtemp(prefix="ipcgw-ho-")
    started = time.monotonic()
    try:
        dp.build()
        server = _Server(dp.client, _url(cfg.transport, tmp, tag), cfg.policy,
                         out / "server.log")
        if echo:
            echo(f"namespaces {dp.client} / {dp.server}; ipcgw serve on {server.url} "
                 f"({'RssiPolicy' if cfg.policy else 'no policy: baseline'}); "
                 "starting ns-3 (~10 s to import)...")
        dp.start({"url": server.url, "path_id": WLAN, "alpha": cfg.report_alpha,
                  "min_interval_ms": cfg.report_interval_ms})
        started = time.monotonic()

        def show(row: dict[str, Any]) -> None:
            if not echo or not marks:
                return
            sim = marks[-1][1]
            rssi = sim["rssi"].get(str(WLAN))
            mbit = row["mbit"]
            cpu = _cpu_share([m for _, m in marks])
            echo(f"sim {sim['sim']:6.1f} s  wall {time.monotonic() - started:6.1f} s  "
                 f"lag {sim['lag'] * 1000:5.0f} ms  d {sim['distance'].get(str(WLAN), 0):5.1f} m  "
                 f"rssi {rssi if rssi is not None else float('nan'):6.1f} dBm  "
                 f"wlan ep {'BACKUP' if row['endpoint_backup'].get(WLAN_ENDPOINT) else 'active'}  "
                 f"lte {mbit.get(LTE, 0):5.2f}  wlan {mbit.get(WLAN, 0):5.2f} Mbit/s  "
                 f"total {sum(row['bytes'].values()) / 1e6:6.1f} MB  sim cpu {cpu * 100:3.0f} %")

        sampler = PathSampler(dp.client, {dp.client_addr(LTE): LTE, dp.client_addr(WLAN): WLAN},
                              interval=cfg.sample_s, on_row=show)
        time.sleep(0.5)  # let the station associate before the first SYN
        bulk = Bulk(dp.client, dp.server, dp.server_addr(LTE))
        sampler.start()
        dp.wait(cfg.duration + 30)
        dp.check()
    finally:
        if sampler is not None:
            sampler.stop()
        if bulk is not None:
            bulk.stop()
        if server is not None:
            server.stop()
        dp.down()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if sampler.error is not None:
        raise DataplaneError(f"sampling the client kernel failed: {sampler.error}")
    rows = _timeline(sampler, marks, started)
    summary = _summary(rows, cfg, [m for _, m in marks], dp, bulk)
    _write_csv(out / "timeline.csv", rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        plot(rows, summary, out / "timeline.png")
    except ImportError as exc:  # matplotlib is optional
        summary["plot"] = f"not drawn: {exc}"
    return HandoverResult(out, rows, summary)


def _timeline(sampler: PathSampler, marks: list[tuple[float, dict[str, Any]]],
              started: float) -> list[dict[str, Any]]:
    """Kernel samples joined with the simulation's latest progress at that moment."""
    rows = []
    j = -1
    for r in sampler.rows[1:]:
        at = sampler.t0 + r["t"]
        while j + 1 < len(marks) and marks[j + 1][0] <= at:
            j += 1
        sim = marks[j][1] if j >= 0 else {}
        rows.append({
            "time_s": round(at - started, 3),
            "sim_time_s": sim.get("sim"),
            "rssi_dbm": sim.get("rssi", {}).get(str(WLAN)),
            "distance_m": sim.get("distance", {}).get(str(WLAN)),
            "wlan_endpoint_backup": int(bool(r["endpoint_backup"].get(WLAN_ENDPOINT))),
            "wlan_subflow_backup": int(bool(r["subflow_backup"].get(WLAN))),
            "lte_mbit": round(r["mbit"].get(LTE, 0.0), 4),
            "wlan_mbit": round(r["mbit"].get(WLAN, 0.0), 4),
            "lte_bytes": r["bytes"].get(LTE, 0),
            "wlan_bytes": r["bytes"].get(WLAN, 0),
            "lag_ms": round(sim.get("lag", 0.0) * 1000, 1),
        })
    return rows


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _summary(rows: list[dict[str, Any]], cfg: HandoverConfig, progress: list[dict[str, Any]],
             dp: DataPlane, bulk: Bulk | None) -> dict[str, Any]:
    crossing = next((r["time_s"] for r in rows
                     if r["rssi_dbm"] is not None and r["rssi_dbm"] < THRESHOLD_DBM), None)
    flip = next((r["time_s"] for r in rows if r["wlan_endpoint_backup"]), None)
    pivot = flip if flip is not None else crossing
    before = [r for r in rows if pivot is None or r["time_s"] < pivot]
    after = [r for r in rows if pivot is not None and r["time_s"] >= pivot + 1.5]
    total_mbit = [r["lte_mbit"] + r["wlan_mbit"] for r in rows]
    cpu = _cpu_share(progress)
    return {
        "policy": cfg.policy,
        "transport": cfg.transport,
        "rssi_crossing_s": crossing,
        "endpoint_backup_s": flip,
        "wlan_mbit_before": _mean([r["wlan_mbit"] for r in before[2:]]),
        "wlan_mbit_after": _mean([r["wlan_mbit"] for r in after]),
        "lte_mbit_before": _mean([r["lte_mbit"] for r in before[2:]]),
        "lte_mbit_after": _mean([r["lte_mbit"] for r in after]),
        "total_mbit_mean": _mean(total_mbit[2:]),
        "bytes_received": bulk.received if bulk else None,
        "max_lag_ms": max((r["lag_ms"] for r in rows), default=None),
        "sim_cpu_share": round(cpu, 3),
        "sim_cpu_pct_per_mbit_s": round(100 * cpu / max(_mean(total_mbit[2:]) or 1e-3, 1e-3), 3),
        "relay_frames": dp.done.get("to_link") if dp.done else None,
        "queue_drops": dp.done.get("queue_drops") if dp.done else None,
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """RSSI, WLAN endpoint state and per-path throughput on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["time_s"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(9, 7),
                                        gridspec_kw={"height_ratios": [2, 1, 3]})
    ax1.plot(t, [r["rssi_dbm"] if r["rssi_dbm"] is not None else float("nan") for r in rows],
             label="station RSSI (MonitorSnifferRx, EWMA)")
    ax1.axhline(THRESHOLD_DBM, color="red", ls="--", lw=1, label=f"{THRESHOLD_DBM:.0f} dBm")
    ax1.set_ylabel("dBm")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.step(t, [r["wlan_endpoint_backup"] for r in rows], where="post", color="purple")
    ax2.set_yticks([0, 1], ["active", "backup"])
    ax2.set_ylabel("WLAN ep")
    ax3.plot(t, [r["lte_mbit"] for r in rows], label="path 1: LTE stand-in")
    ax3.plot(t, [r["wlan_mbit"] for r in rows], label="path 2: WiFi")
    ax3.set_ylabel("Mbit/s (kernel subflows)")
    ax3.set_xlabel("time since simulation start (s)")
    ax3.legend(loc="upper right", fontsize=8)
    for ax in (ax1, ax2, ax3):
        for key, style in (("rssi_crossing_s", ":"), ("endpoint_backup_s", "-.")):
            if summary.get(key) is not None:
                ax.axvline(summary[key], color="gray", ls=style, lw=1)
    fig.suptitle(f"MPTCP handover, {'RssiPolicy' if summary['policy'] else 'baseline (no policy)'}"
                 f" over {summary['transport']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
