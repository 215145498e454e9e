"""The seed's handover experiment, end to end, on the NS-3 data plane.

Path 1 is the LTE stand-in (see :mod:`ns3_side.lab.paths`), path 2 WiFi: the
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ipcgw.errors import ServerStartError
from ipcgw.testing import ServerProcess, fresh_url, provenance
from ns3_side.lab.dataplane import ROOT, DataPlane, DataplaneError
from ns3_side.lab.paths import PathConfig, cell, wifi
from ns3_side.lab.traffic import Bulk, PathSampler

__all__ = ["HandoverConfig", "HandoverResult", "compare_plot", "plot", "run"]

LTE, WLAN = 1, 2
WLAN_ENDPOINT = 2
POLICY = "ipcgw.mptcp.policy:RssiPolicy"
THRESHOLD_DBM = -80.0
PACKAGES = ("ns3", "cppyy", "pyroute2", "msgpack", "matplotlib", "click")  # in versions.json


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
    policy_spec: str = POLICY  # module:Class?name=value&... (ipcgw.mptcp.policy.build_policy)
    report_alpha: float = 0.3  # client-side EWMA weight per frame (used when report_tau_ms is 0)
    report_tau_ms: float = 0.0  # client-side time constant instead (independent of traffic)
    report_interval_ms: float = 100.0
    detect_dbm: float | None = -92.0  # station's preamble detection (None: ns-3's default)
    sample_s: float = 0.25
    hard_limit_ms: float = 500.0
    seed: int = 1
    prefix: str | None = None
    # the WiFi path's further options, PathConfig.parse's keys: "rate_manager=minstrel",
    # "mobility=bounce,end=60", "phy.RxNoiseFigure=9" (applied after the fields above)
    wifi_options: tuple[str, ...] = ()
    ns3_defaults: dict[str, str] = field(default_factory=dict)  # ns3::Type::Attr -> value

    def paths(self) -> list[PathConfig]:
        station = wifi(self.start_m, self.speed_mps, wifi_mode=self.wifi_mode,
                       detect_dbm=self.detect_dbm)
        return [cell(self.lte_rate_mbit, self.lte_delay_ms),
                station.with_options(",".join(self.wifi_options))]

    def build_policy(self) -> Any:
        """The policy as the server builds it (also for the threshold and to replay its filter)."""
        from ipcgw.mptcp.policy import build_policy

        return build_policy(self.policy_spec)


@dataclass
class HandoverResult:
    out: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


class _Server(ServerProcess):
    """``ipcgw serve --handler mptcp`` in the client namespace, its log at ``log_path``;
    stopped with SIGTERM (it cleans up)."""

    def __init__(self, netns: str, url: str, policy: str | None, log_path: Path) -> None:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            super().__init__([url], log_dir=log_path.parent, netns=netns, env=env, cwd=ROOT,
                             extra=["--handler", "mptcp", *(["--policy", policy] if policy else [])],
                             start_timeout=30.0)
        except ServerStartError as exc:
            raise DataplaneError(f"ipcgw serve did not start: {self.log()[-800:]}") from exc
        finally:
            if hasattr(self, "log_path"):  # the file stays open: the server keeps writing
                os.replace(self.log_path, log_path)
                self.log_path = log_path


def _cpu_share(progress: list[dict[str, Any]]) -> float:
    """CPU seconds per wall second of the simulation process since it started running."""
    if len(progress) < 2:
        return 0.0
    a, b = progress[0], progress[-1]
    cpu, wall = float(b["cpu"]) - float(a["cpu"]), float(b["wall"]) - float(a["wall"])
    return cpu / max(wall, 1e-3)


Printer = Callable[[str], None]


def run(cfg: HandoverConfig, out: Path, *, echo: Printer | None = print) -> HandoverResult:
    """Run one experiment into ``out``; everything it made is removed at the end."""
    policy = cfg.build_policy()  # a bad spec fails here, in one line, before anything is built
    threshold = float(getattr(policy, "threshold_dbm", THRESHOLD_DBM))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {**asdict(cfg), "paths": [p.to_json() for p in cfg.paths()],
         "policy_spec": cfg.policy_spec if cfg.policy else None, "threshold_dbm": threshold},
        indent=2))
    (out / "versions.json").write_text(json.dumps(provenance(PACKAGES), indent=2))
    marks: list[tuple[float, dict[str, Any]]] = []  # (monotonic, sim progress)
    dp = DataPlane(cfg.paths(), prefix=cfg.prefix, scenario=1, duration=cfg.duration,
                   hard_limit_ms=cfg.hard_limit_ms, seed=cfg.seed, log_dir=out,
                   ns3_defaults=cfg.ns3_defaults,
                   progress_s=min(0.25, cfg.sample_s),
                   on_progress=lambda m: marks.append((time.monotonic(), m)))
    server: _Server | None = None
    bulk: Bulk | None = None
    sampler: PathSampler | None = None
    tmp = tempfile.mkdtemp(prefix="ipcgw-ho-")
    started = time.monotonic()
    try:
        dp.build()
        server = _Server(dp.client, fresh_url(cfg.transport, tmp),
                         cfg.policy_spec if cfg.policy else None, out / "server.log")
        if echo:
            echo(f"namespaces {dp.client} / {dp.server}; ipcgw serve on {server.url} "
                 f"({'RssiPolicy' if cfg.policy else 'no policy: baseline'}); "
                 "starting ns-3 (~10 s to import)...")
        dp.start({"url": server.url, "path_id": WLAN, "alpha": cfg.report_alpha,
                  "tau_ms": cfg.report_tau_ms, "min_interval_ms": cfg.report_interval_ms,
                  "threshold_dbm": threshold})
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
    decisions = _decisions(out / "server.log")
    replay = _replay(cfg, dp.reports)
    rows = _timeline(sampler, marks, started, replay, dp.reports)
    summary = _summary(rows, cfg, [m for _, m in marks], dp, bulk, threshold)
    summary["chain"] = _chain(threshold, dp, decisions, sampler, started)
    _write_csv(out / "timeline.csv", rows)
    _write_csv(out / "reports.csv", [{**r, "time_s": round(r["host_mono"] - started, 4),
                                      "policy_filtered_dbm": f}
                                     for r, f in zip(dp.reports, replay, strict=True)])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        plot(rows, summary, out / "timeline.png")
    except ImportError as exc:  # matplotlib is optional
        summary["plot"] = f"not drawn: {exc}"
    return HandoverResult(out, rows, summary)


def _decisions(log: Path) -> list[dict[str, Any]]:
    """The policy's decisions as it logged them (``RssiPolicy decision {json}``)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        _, sep, rest = line.partition("RssiPolicy decision ")
        if sep:
            try:
                out.append(json.loads(rest))
            except ValueError:
                continue
    return out


def _replay(cfg: HandoverConfig, reports: list[dict[str, Any]]) -> list[float | None]:
    """The policy's own filtered value after each report: the same policy, fed the
    same reports (its filter is deterministic), acting on nothing."""
    from ipcgw.messages import Report

    class _Nothing:
        def set_endpoint_flags(self, *_: Any, **__: Any) -> None:
            """The replay decides, the kernel is not told."""

    policy = cfg.build_policy()
    policy.bind(_Nothing())
    out: list[float | None] = []
    for r in reports:
        metrics = {k: v for k, v in r.items() if k not in ("sim", "path", "node")}
        st = getattr(policy, "stations", None)
        policy.on_report(Report(r["sim"], r["path"], metrics, r["node"]))
        station = st.get((None, r["node"], r["path"])) if isinstance(st, dict) else None
        out.append(None if station is None or station.filtered is None
                   else round(station.filtered, 3))
    return out


def _chain(threshold: float, dp: DataPlane, decisions: list[dict[str, Any]],
           sampler: PathSampler, started: float) -> dict[str, Any]:
    from ns3_side.lab.chain import reaction_chain

    cross = next((m for m in dp.marks if m.get("what") == "model_crossing"), None)
    first = next((d for d in decisions if d.get("backup") is True), None)
    chain = reaction_chain(
        threshold, crossing_mono=cross["mono"] if cross else None,
        reports=[(r["host_mono"], r["rssi_dbm"]) for r in dp.reports
                 if isinstance(r.get("rssi_dbm"), (int, float)) and "host_mono" in r],
        decision=first, rows=[(sampler.t0 + r["t"], r["bytes"]) for r in sampler.rows],
        wlan=WLAN, other=LTE)
    chain["model_crossing_sim_s"] = cross["sim"] if cross else None
    chain["decision_why"] = first.get("why") if first else None
    lost = next((r for r in dp.reports if r.get("link_up") is False), None)
    chain["link_down_mono"] = lost["host_mono"] if lost else None
    for key in [k for k in chain if k.endswith("_mono")]:
        chain[key.replace("_mono", "_s")] = (None if chain[key] is None
                                             else round(chain[key] - started, 4))
    return chain


def _timeline(sampler: PathSampler, marks: list[tuple[float, dict[str, Any]]],
              started: float, replay: list[float | None],
              reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kernel samples joined with the simulation's latest progress at that moment, and
    the policy's filtered value after the last report before it. RSSI is None while
    the station hears no frame (deaf): a gap, not a held value."""
    rows = []
    j = -1
    k = -1
    prev_frames: int | None = None
    for r in sampler.rows[1:]:
        at = sampler.t0 + r["t"]
        while j + 1 < len(marks) and marks[j + 1][0] <= at:
            j += 1
        while k + 1 < len(reports) and reports[k + 1].get("host_mono", at + 1) <= at:
            k += 1
        sim = marks[j][1] if j >= 0 else {}
        frames = sim.get("frames", {}).get(str(WLAN))
        heard = frames is None or prev_frames is None or frames != prev_frames
        prev_frames = frames if frames is not None else prev_frames
        model = sim.get("model_rssi", {}).get(str(WLAN))
        rows.append({
            "time_s": round(at - started, 3),
            "sim_time_s": sim.get("sim"),
            "model_rssi_dbm": model,
            "rssi_raw_dbm": sim.get("rssi_raw", {}).get(str(WLAN)) if heard else None,
            "rssi_dbm": sim.get("rssi", {}).get(str(WLAN)) if heard else None,
            "policy_rssi_dbm": replay[k] if k >= 0 and heard else None,
            "distance_m": sim.get("distance", {}).get(str(WLAN)),
            "wlan_endpoint_backup": int(bool(r["endpoint_backup"].get(WLAN_ENDPOINT))),
            "wlan_subflow_backup": int(bool(r["subflow_backup"].get(WLAN))),
            "lte_mbit": round(r["mbit"].get(LTE, 0.0), 4),
            "wlan_mbit": round(r["mbit"].get(WLAN, 0.0), 4),
            "total_mbit": round(r["mbit"].get(LTE, 0.0) + r["mbit"].get(WLAN, 0.0), 4),
            "lte_bytes": r["bytes"].get(LTE, 0),
            "wlan_bytes": r["bytes"].get(WLAN, 0),
            "lag_ms": round(sim.get("lag", 0.0) * 1000, 1),
        })
    return rows


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _summary(rows: list[dict[str, Any]], cfg: HandoverConfig, progress: list[dict[str, Any]],
             dp: DataPlane, bulk: Bulk | None, threshold: float) -> dict[str, Any]:
    # the first sampler row whose client-filtered RSSI is below the threshold (coarse:
    # sample_s); the exact instants are in "chain"
    crossing = next((r["time_s"] for r in rows
                     if r["rssi_dbm"] is not None and r["rssi_dbm"] < threshold), None)
    flip = next((r["time_s"] for r in rows if r["wlan_endpoint_backup"]), None)
    pivot = flip if flip is not None else crossing
    before = [r for r in rows if pivot is None or r["time_s"] < pivot]
    after = [r for r in rows if pivot is not None and r["time_s"] >= pivot + 1.5]
    total_mbit = [r["lte_mbit"] + r["wlan_mbit"] for r in rows]
    cpu = _cpu_share(progress)
    return {
        "policy": cfg.policy,
        "policy_spec": cfg.policy_spec if cfg.policy else None,
        "threshold_dbm": threshold,
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
        # per path, [client side, server side]: {cause: packets} (DATAPLANE.md "Losses")
        "losses": dp.done.get("losses") if dp.done else None,
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _nan(v: Any) -> float:
    return float("nan") if v is None or v == "" else float(v)


def _vlines(ax: Any, summary: dict[str, Any], label: bool) -> None:
    chain = summary.get("chain") or {}
    for key, style, color, text in (
            ("model_crossing_s", ":", "red", "model RSSI crosses threshold"),
            ("first_report_below_s", "--", "tab:blue", "first report below"),
            ("kernel_ack_s", "-.", "purple", "policy → backup (kernel ACK)"),
            ("link_down_s", "-", "black", "station lost the AP (link down)")):
        if chain.get(key) is not None:
            ax.axvline(chain[key], color=color, ls=style, lw=1, label=text if label else None)


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """RSSI (model, raw, both filters), WLAN endpoint state and throughput on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = summary.get("threshold_dbm", THRESHOLD_DBM)
    t = [r["time_s"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(10, 8),
                                        gridspec_kw={"height_ratios": [3, 1, 3]})
    ax1.plot(t, [_nan(r.get("model_rssi_dbm")) for r in rows], color="gray", lw=1,
             label="propagation model at the station")
    ax1.plot(t, [_nan(r.get("rssi_raw_dbm")) for r in rows], color="tab:cyan", lw=0.8,
             alpha=0.7, label="last frame (unfiltered)")
    ax1.plot(t, [_nan(r.get("rssi_dbm")) for r in rows], color="tab:blue",
             label="reported (client filter)")
    ax1.plot(t, [_nan(r.get("policy_rssi_dbm")) for r in rows], color="tab:orange",
             label="policy's filter")
    ax1.axhline(thr, color="red", ls="--", lw=1, label=f"threshold {thr:.0f} dBm")
    _vlines(ax1, summary, label=True)
    ax1.set_ylabel("RSSI (dBm)")
    ax1.legend(loc="lower left", fontsize=7, ncol=2)
    ax1.set_title("gaps: the station hears no frame (deaf)", fontsize=8, loc="right")
    ax2.step(t, [r["wlan_endpoint_backup"] for r in rows], where="post", color="purple")
    ax2.set_yticks([0, 1], ["active", "backup"])
    ax2.set_ylabel("WLAN ep")
    _vlines(ax2, summary, label=False)
    ax3.plot(t, [r["lte_mbit"] for r in rows], label="path 1: LTE stand-in")
    ax3.plot(t, [r["wlan_mbit"] for r in rows], label="path 2: WiFi")
    ax3.plot(t, [r.get("total_mbit", r["lte_mbit"] + r["wlan_mbit"]) for r in rows],
             color="black", lw=1, label="total")
    _vlines(ax3, summary, label=False)
    ax3.set_ylabel("Mbit/s (kernel subflows)")
    ax3.set_xlabel("time since simulation start (s)")
    ax3.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"MPTCP handover, {'RssiPolicy' if summary['policy'] else 'baseline (no policy)'}"
                 f" over {summary['transport']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


def compare_plot(policy_dir: Path, baseline_dir: Path, path: Path) -> None:
    """One figure: the policy run against the baseline (RSSI, per-path and total Mbit/s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"policy": (_read_csv(policy_dir / "timeline.csv"),
                       json.loads((policy_dir / "summary.json").read_text())),
            "baseline": (_read_csv(baseline_dir / "timeline.csv"),
                         json.loads((baseline_dir / "summary.json").read_text()))}
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(10, 8),
                                        gridspec_kw={"height_ratios": [2, 3, 2]})
    for name, (rows, summary) in runs.items():
        t = [r["time_s"] for r in rows]
        ls = "-" if name == "policy" else "--"
        ax1.plot(t, [_nan(r.get("rssi_dbm")) for r in rows], ls=ls, label=f"{name}: reported RSSI")
        ax2.plot(t, [r["lte_mbit"] for r in rows], ls=ls, color="tab:blue", label=f"{name}: LTE")
        ax2.plot(t, [r["wlan_mbit"] for r in rows], ls=ls, color="tab:orange",
                 label=f"{name}: WiFi")
        ax3.plot(t, [r.get("total_mbit") if r.get("total_mbit") is not None
                     else r["lte_mbit"] + r["wlan_mbit"] for r in rows], ls=ls, color="black",
                 label=f"{name}: total (mean {summary.get('total_mbit_mean')} Mbit/s)")
    thr = runs["policy"][1].get("threshold_dbm", THRESHOLD_DBM)
    ax1.axhline(thr, color="red", ls=":", lw=1, label=f"threshold {thr:.0f} dBm")
    _vlines(ax1, runs["policy"][1], label=True)
    _vlines(ax2, runs["policy"][1], label=False)
    _vlines(ax3, runs["policy"][1], label=False)
    ax1.set_ylabel("dBm")
    ax2.set_ylabel("Mbit/s per path")
    ax3.set_ylabel("Mbit/s total")
    ax3.set_xlabel("time since simulation start (s)")
    for ax in (ax1, ax2, ax3):
        ax.legend(loc="lower left", fontsize=7, ncol=2)
        ax.grid(True, alpha=0.3)
    fig.suptitle("MPTCP handover: RssiPolicy (solid) vs baseline without policy (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
