"""Click commands of the NS-3 data plane: ``dataplane run|down`` and ``experiment handover``.

For ``ipcgw/cli.py``'s lazy group::

    "dataplane": "ns3_side.lab.cli:dataplane",
    "experiment": "ns3_side.lab.cli:experiment",

Standalone: ``python -m ns3_side.lab.cli dataplane run ...``. The simulation is a
child of the command, and its TAPs die with it, so ``dataplane run`` stays in
the foreground; Ctrl-C (or SIGTERM) removes everything it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ipcgw.errors import IpcgwError
from ipcgw.transports import TRANSPORTS

__all__ = ["dataplane", "experiment", "interrupt_on_term"]


@contextlib.contextmanager
def interrupt_on_term() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C while the block runs, so its cleanup runs.

    Only in this process: pyroute2 forks helpers (``netns.create``) that
    inherit the handler and get SIGTERM when done; unwinding there would run
    our cleanup in the child and delete the namespaces under us.
    """
    me = os.getpid()

    def raise_interrupt(signum: int, _frame: Any) -> None:
        if os.getpid() != me:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group()
def dataplane() -> None:
    """Client/server namespaces joined through a real-time NS-3 simulation."""
    from ipcgw.mptcp.cli import require_root

    require_root("ipcgw dataplane (namespaces, TAP devices, the path manager)")


def parse_defaults(items: tuple[str, ...]) -> dict[str, str]:
    """``ns3::Type::Attr=VALUE`` options; ns-3 itself checks names and values when the
    simulation starts (ns3_side.lab.options)."""
    from ns3_side.lab.paths import is_ns3_default

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not is_ns3_default(key):
            raise click.BadParameter(f"{item!r}: write ns3::Type::Attribute=VALUE",
                                     param_hint="--ns3-default")
        out[key] = value
    return out


@dataplane.command("run")
@click.option("--path", "paths", multiple=True, metavar="KIND[:k=v,...]",
              help="One per path: p2p:rate=5,delay=10,loss=0.01,queue=50 | "
                   "wifi:start=10,speed=2,mode=OfdmRate12Mbps | cell[:rate=..,delay=..] | "
                   "lte[:distance=M,rb=6|15|25|50|75|100,delay=..]. Default: cell and wifi. "
                   "wifi also takes mobility=line|bounce|waypoints|random_walk, end=M, "
                   "way=T/X/Y;T/X/Y, rate_manager=constant|ideal|minstrel|minstrel_ht|aarf; "
                   "any kind takes OBJECT.Attribute=VALUE for an ns-3 attribute of its "
                   "objects (wifi: phy, sta_phy, ap_phy, mac, sta_mac, ap_mac, manager, "
                   "queue, device, mobility; p2p/cell: device, channel, queue, error_model).")
@click.option("--ns3-default", "ns3_defaults", multiple=True, metavar="ns3::Type::Attr=VALUE",
              help="An ns-3 default (Config::SetDefault) set before the topology is built; "
                   "repeatable, e.g. ns3::WifiMacQueue::MaxDelay=200ms.")
@click.option("--prefix", default="ipcgw", show_default=True,
              help="Namespaces are PREFIX-cli and PREFIX-srv.")
@click.option("--scenario", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: client subflow endpoint on path 2; 2: server signal endpoint on path 2.")
@click.option("--duration", type=float, help="Seconds to run (default: until Ctrl-C).")
@click.option("--hard-limit-ms", type=float, default=500.0, show_default=True,
              help="ns-3 stops with 'Hard real-time limit exceeded' beyond this lag (0: best effort).")
@click.option("--stations", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Stations in the simulation, each with the same paths in its own namespaces "
                   "(PREFIXs<k>-cli/-srv for k >= 2); WiFi starts --station-spacing m further "
                   "out per station.")
@click.option("--station-spacing", type=float, default=5.0, show_default=True, metavar="M")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def run_cmd(paths: tuple[str, ...], ns3_defaults: tuple[str, ...], prefix: str, scenario: int,
            duration: float | None, hard_limit_ms: float, stations: int, station_spacing: float,
            quiet: bool) -> None:
    """Build the namespaces and run the simulation in the foreground."""
    from ns3_side.lab.dataplane import DataPlane, station_copies
    from ns3_side.lab.paths import PathConfig, cell, wifi

    try:
        configs = [PathConfig.parse(p) for p in paths] or [cell(), wifi()]
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--path") from None
    defaults = parse_defaults(ns3_defaults)

    def show(m: dict[str, Any]) -> None:
        if not quiet and int(m["sim"] * 2) % 4 == 0:  # every 2 s
            frames = " ".join(f"p{i}:{a}/{b}" for i, (a, b) in enumerate(m["to_link"], 1))
            rssi = " ".join(f"p{k}:{v} dBm" for k, v in m["rssi"].items())
            rssi += "".join(f" p{k}:RSRP {v} dBm SINR {m['sinr_db'][k]} dB"
                            for k, v in m.get("rsrp_dbm", {}).items())
            click.echo(f"sim {m['sim']:7.1f} s  lag {m['lag'] * 1000:5.0f} ms  "
                       f"frames {frames}  {rssi}")

    dp = DataPlane(configs, prefix=prefix, scenario=scenario, duration=duration,
                   hard_limit_ms=hard_limit_ms, on_progress=show, ns3_defaults=defaults,
                   more_stations=station_copies(configs, stations, station_spacing))
    try:
        with interrupt_on_term():
            click.echo(f"building {dp.client} / {dp.server}; starting ns-3 (~10 s)...")
            dp.up()
            click.echo(json.dumps({"client": dp.client, "server": dp.server, "paths": [
                {"path": i, "kind": c.kind, "client": dp.client_addr(i),
                 "server": dp.server_addr(i), "rate_mbit": c.rate_mbit, "delay_ms": c.delay_ms,
                 "queue_packets": c.queue} for i, c in enumerate(configs, 1)]}, indent=2))
            for k in range(2, dp.n_stations + 1):
                st = dp.station(k)
                click.echo(f"station {k}: {st.client} / {st.server} (same addresses)")
            click.echo(f"try: ip netns exec {dp.client} ping {dp.server_addr(1)}   (Ctrl-C ends)")
            while dp.wait(1.0) is None:
                pass
    except KeyboardInterrupt:
        click.echo("stopping")
    except IpcgwError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        dp.down()


@dataplane.command()
@click.option("--prefix", default="ipcgw", show_default=True)
def down(prefix: str) -> None:
    """Remove PREFIX-cli and PREFIX-srv and the controller's temp folder left by a kill -9."""
    from ipcgw.testbed import Testbed
    from ns3_side.lab.dataplane import remove_stale_tmp, station_prefixes

    more = station_prefixes(prefix)
    for p in [prefix, *more]:
        Testbed(prefix=p).down()
    gone = remove_stale_tmp(prefix)
    click.echo(f"removed {prefix}-cli and {prefix}-srv"
               + "".join(f", {p}-cli and {p}-srv" for p in more)
               + (f" and {', '.join(gone)}" if gone else ""))


@click.group()
def experiment() -> None:
    """Experiments on the NS-3 data plane."""


@experiment.command()
@click.option("--transport", "-t", type=click.Choice(list(TRANSPORTS)),
              default="fifo", show_default=True, help="Simulation -> ipcgw serve transport.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Results folder (default: results/handover-<policy>-<time>).")
@click.option("--no-policy", is_flag=True, help="Baseline: the server gets reports, does nothing.")
@click.option("--duration", type=float, default=40.0, show_default=True, help="Seconds.")
@click.option("--start", "start_m", type=float, default=30.0, show_default=True,
              help="Station's initial distance from the AP, m.")
@click.option("--speed", "speed_mps", type=float, default=2.0, show_default=True,
              help="Station speed away from the AP, m/s (-80 dBm is at ~44 m).")
@click.option("--wifi-mode", default="OfdmRate12Mbps", show_default=True,
              help="802.11a constant PHY rate (OfdmRate6Mbps ... OfdmRate54Mbps).")
@click.option("--lte-rate", type=float, default=10.0, show_default=True, help="Mbit/s.")
@click.option("--lte-delay", type=float, default=25.0, show_default=True, help="One way, ms.")
@click.option("--hard-limit-ms", type=float, default=500.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--prefix", help="Namespace prefix (default: a unique one).")
@click.option("--policy", "policy_spec", default="ipcgw.mptcp.policy:RssiPolicy", show_default=True,
              help="module:Class?name=value&..., e.g. 'ipcgw.mptcp.policy:RssiPolicy?threshold=-78"
                   "&tau_ms=300' (checked against the constructor).")
@click.option("--report-alpha", type=float, default=0.3, show_default=True,
              help="Client-side EWMA weight per received frame.")
@click.option("--report-tau-ms", type=float, default=0.0, show_default=True,
              help="Client-side filter time constant instead (does not depend on traffic).")
@click.option("--detect-dbm", default="-92", show_default=True,
              help="Station's preamble detection threshold; 'default': ns-3's (deaf near -82).")
@click.option("--wifi", "wifi_options", multiple=True, metavar="KEY=VALUE",
              help="More WiFi path options, as in 'dataplane run --path wifi:...': "
                   "rate_manager=minstrel, mobility=bounce, end=60, phy.RxNoiseFigure=9.")
@click.option("--ns3-default", "ns3_defaults", multiple=True, metavar="ns3::Type::Attr=VALUE",
              help="An ns-3 default set before the topology is built (repeatable).")
def handover(transport: str, out: Path | None, no_policy: bool, duration: float, start_m: float,
             speed_mps: float, wifi_mode: str, lte_rate: float, lte_delay: float,
             hard_limit_ms: float, seed: int, prefix: str | None, policy_spec: str,
             report_alpha: float, report_tau_ms: float, detect_dbm: str,
             wifi_options: tuple[str, ...], ns3_defaults: tuple[str, ...]) -> None:
    """A station walks away from its AP while MPTCP sends; RssiPolicy moves the traffic.

    Writes timeline.png, timeline.csv, summary.json, config.json, versions.json.
    """
    from ns3_side.lab.handover import HandoverConfig
    from ns3_side.lab.handover import run as run_handover

    try:
        detect = None if detect_dbm == "default" else float(detect_dbm)
    except ValueError:
        raise click.BadParameter(f"a number or 'default', got {detect_dbm!r}",
                                 param_hint="--detect-dbm") from None
    cfg = HandoverConfig(transport=transport, policy=not no_policy, duration=duration,
                         start_m=start_m, speed_mps=speed_mps, wifi_mode=wifi_mode,
                         lte_rate_mbit=lte_rate, lte_delay_ms=lte_delay,
                         hard_limit_ms=hard_limit_ms, seed=seed, prefix=prefix,
                         policy_spec=policy_spec, report_alpha=report_alpha,
                         report_tau_ms=report_tau_ms, detect_dbm=detect,
                         wifi_options=wifi_options, ns3_defaults=parse_defaults(ns3_defaults))
    try:
        cfg.build_policy()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from None
    try:
        cfg.paths()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wifi") from None
    if out is None:
        out = Path("results") / (f"handover-{'policy' if cfg.policy else 'baseline'}-"
                                 f"{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        with interrupt_on_term():
            result = run_handover(cfg, out, echo=click.echo)
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; namespaces and processes removed") from None
    except IpcgwError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.summary, indent=2))
    click.echo(f"results in {out}/ (timeline.png, timeline.csv, summary.json)")


@experiment.command("handover-compare")
@click.argument("policy_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("baseline_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG (default: POLICY_DIR/../policy_vs_baseline.png).")
def handover_compare(policy_dir: Path, baseline_dir: Path, out: Path | None) -> None:
    """One figure of a policy run against its baseline (two handover result folders)."""
    from ns3_side.lab.handover import compare_plot

    out = out or policy_dir.parent / "policy_vs_baseline.png"
    compare_plot(policy_dir, baseline_dir, out)
    click.echo(str(out))


@click.group()
def _standalone() -> None:
    """ns3_side commands (also under ``ipcgw``)."""


_standalone.add_command(dataplane)
_standalone.add_command(experiment)

if __name__ == "__main__":
    _standalone()
