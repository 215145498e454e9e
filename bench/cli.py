"""``ipcgw bench`` (also ``python -m ipcgw_bench``): run the benchmark, write the report,
or compare two runs."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from ipcgw.transports import TRANSPORTS

__all__ = ["bench_command"]

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1024, "m": 1 << 20, "mib": 1 << 20,
          "mb": 1 << 20}


def parse_size(text: str) -> int:
    """``64``, ``1K``, ``64KiB``, ``1MiB`` -> bytes (binary units: payload sizes are buffers)."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"expected a size like 64, 1K, 64KiB or 1MiB, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _sizes(_ctx: Any, _param: Any, value: tuple[str, ...]) -> list[int] | None:
    sizes: list[int] = []
    for item in value:
        sizes += [parse_size(s) for s in item.split(",") if s.strip()]
    return sizes or None


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True,
              help="About 40 s: length:4 framing only and 50 ms per case.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-report"), show_default=True, help="Report directory.")
@click.option("--transport", "-t", "transports", multiple=True,
              type=click.Choice(list(TRANSPORTS)),
              help="Gateway transports (repeatable; default every one that imports).")
@click.option("--framing", "framings", multiple=True,
              help="Framings of the gateway (repeatable; default length:4 and delimited:nul).")
@click.option("--size", "sizes", multiple=True, callback=_sizes,
              help="Payload sizes, e.g. 64,1K,64K,1M (repeatable; default 64 B, 1 KiB, 64 KiB, 1 MiB).")
@click.option("--placement", "placements", multiple=True, type=click.Choice(["same", "cross"]),
              help="CPU placements (default both: same = one CPU, cross = one each).")
@click.option("--lat-time", type=float, help="Seconds of timed round trips per case (default 1.0).")
@click.option("--tp-time", type=float, help="Seconds of one-way sending per case (default 1.0).")
@click.option("--idle-time", type=float,
              help="Seconds of the shm idle-CPU measurement (default 10, 2 with --quick; 0: skip).")
@click.option("--raw/--no-raw", default=True, show_default=True, help="Raw-Python references.")
@click.option("--c/--no-c", "c_floor", default=True, show_default=True, help="C floor (needs cc).")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="ZeroMQ (pyzmq) and multiprocessing.Pipe.")
@click.option("--micro/--no-micro", default=True, show_default=True,
              help="Framing and codec micro-bench.")
@click.option("--netns", is_flag=True,
              help="Run each gateway server in a fresh network namespace (root; tcp is skipped).")
@click.option("--pm", "pm", is_flag=True,
              help="Only the path-manager commands (root): lean vs pyroute2 through unix and shm; "
                   "writes bench/results/pm.md (--quick: fewer samples).")
@click.option("--compare", "compare_files", nargs=2, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), metavar="OLD.json NEW.json",
              help="Print new/old ratios of two results.json files instead of running.")
@click.option("--threshold", type=float, default=0.10, show_default=True,
              help="With --compare: flag changes larger than this fraction.")
def bench_command(quick: bool, out: Path, transports: tuple[str, ...], framings: tuple[str, ...],
                  sizes: list[int] | None, placements: tuple[str, ...], lat_time: float | None,
                  tp_time: float | None, idle_time: float | None, raw: bool, c_floor: bool,
                  peers: bool, micro: bool, netns: bool, pm: bool,
                  compare_files: tuple[Path, Path] | None, threshold: float) -> None:
    """Latency and throughput of every transport through the real gateway, next to
    raw Python, a C floor and ZeroMQ / multiprocessing.Pipe, pinned to one CPU and
    across two; writes report.md, results.csv, results.json and plots to --out."""
    from . import report

    if compare_files:
        old, new = (report.load(p) for p in compare_files)
        for line in report.compare(old, new, threshold):
            click.echo(line)
        return

    if pm:
        _run_pm(quick, transports, placements)
        return

    from .runner import Config, estimate, plan, run
    from .system import loadavg

    cfg = Config.quick_config() if quick else Config()
    if transports:
        cfg.transports = list(transports)
    if framings:
        from ipcgw.framing import make_framer

        for spec in framings:
            try:
                make_framer(spec)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--framing") from None
        cfg.framings = list(framings)
    if sizes:
        cfg.sizes = sizes
    if placements:
        cfg.placements = list(placements)
    if lat_time is not None:
        cfg.lat_time = lat_time
    if tp_time is not None:
        cfg.tp_time = tp_time
    if idle_time is not None:
        cfg.idle_time = idle_time
    cfg.raw, cfg.c, cfg.peers, cfg.netns = raw, c_floor, peers, netns

    from .servers import available_transports

    names = cfg.transports or available_transports()[0]
    cases = plan(cfg, names)
    micro_time = 0.05 if quick else 0.3
    seconds = estimate(cfg, cases, len(names) * len(cfg.framings)) + (
        48 * micro_time + 1 if micro else 0)
    load = loadavg()
    click.echo(f"ipcgw bench: {len(cases)} cases, estimated {_duration(seconds)}; "
               f"load average {' '.join(map(str, load))}", err=True)
    if load and load[0] > 1.0:
        click.echo("  the machine is busy: figures will be noisier (the load is recorded)",
                   err=True)

    bar = click.progressbar(length=len(cases), label="benchmarking", file=sys.stderr,
                            item_show_func=lambda s: s, show_eta=True, width=30)
    state = {"done": 0}

    def progress(case: Any, i: int, total: int) -> None:
        bar.update(i - state["done"], case.label if case is not None else "done")
        state["done"] = i

    started = time.monotonic()
    with bar:
        doc = run(cfg, progress)
    if micro:
        from .micro import run_micro

        click.echo("framing and codec micro-bench ...", err=True)
        doc["micro"] = run_micro(micro_time)
    doc["duration_s"] = round(time.monotonic() - started, 1)
    written = report.write_report(doc, out)
    errors = [r for r in doc["records"] if r.note.startswith("error")]
    for r in errors:
        click.echo(f"  {r.kind} {r.transport} {r.framing} {r.placement} {r.size}: {r.note}",
                   err=True)
    click.echo(f"wrote {', '.join(str(p) for p in written)} in {doc['duration_s']} s")


def _run_pm(quick: bool, transports: tuple[str, ...], placements: tuple[str, ...]) -> None:
    from .pm import PmConfig, run_pm

    cfg = PmConfig.quick() if quick else PmConfig()
    if transports:
        unknown = sorted(set(transports) - {"unix", "shm"})
        if unknown:
            raise click.BadParameter(f"--pm measures unix and shm, not {', '.join(unknown)}",
                                     param_hint="--transport")
        cfg.transports = list(transports)
    if placements:
        cfg.placements = list(placements)
    try:
        path = run_pm(cfg, lambda line: click.echo(line, err=True))
    except PermissionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main() -> None:
    bench_command(prog_name="python -m ipcgw_bench")
