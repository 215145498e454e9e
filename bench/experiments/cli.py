"""``ipcgw experiment``: run a matrix from a TOML file, rebuild or compare reports.

Registered lazily in ipcgw's CLI as ``experiment = ipcgw_bench.experiments.cli:experiment``
(ipcgw itself never imports bench). The data plane's ``handover`` command
(``ns3_side.lab.cli:handover``) joins this group lazily, so one ``experiment``
name serves both and ``run``/``compare`` work where ns-3 is not installed.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["experiment"]


class _Group(click.Group):
    """Subcommands that live elsewhere are imported only when used (and hidden
    from the list when their package cannot be imported)."""

    lazy = {"handover": "ns3_side.lab.cli:handover"}

    def _load(self, name: str) -> click.Command | None:
        module, _, attr = self.lazy[name].partition(":")
        try:
            command: click.Command = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        extra = [n for n in self.lazy if n not in self.commands and self._load(n) is not None]
        return sorted([*super().list_commands(ctx), *extra])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Group)
def experiment() -> None:
    """The seed's evaluation: file transfers, video, iperf3 per policy and transport."""


@experiment.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (default: results/<name>).")
@click.option("--resume", is_flag=True, help="Continue a matrix: skip cells already in results.jsonl.")
@click.option("--logs", is_flag=True, help="Keep ns-3 logs per cell under OUT/logs.")
@click.option("--prefix", default="ixp", show_default=True,
              help="Namespace name prefix (distinct per concurrent run).")
@click.option("--scheduler", metavar="tcp://HOST:8786",
              help="Run the cells on this Dask cluster (pip install 'ipcgw[cluster]'; workers "
                   "as root, --nthreads 1); results and report are written here as usual.")
def run(config: Path, out: Path | None, resume: bool, logs: bool, prefix: str,
        scheduler: str | None) -> None:
    """Run every cell of CONFIG, then write report.md, results.csv and plots."""
    from ipcgw.mptcp.cli import require_root

    from .config import ConfigError, load
    from .report import build_report
    from .runner import run_experiment

    try:
        exp = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    require_root("ipcgw experiment run (namespaces, veth paths, the path manager)")
    out = out or Path("results") / exp.name
    total = len(exp.cells())
    click.echo(f"{exp.name}: {total} cells -> {out}")
    t0 = time.monotonic()

    failed: list[str] = []

    def progress(i: int, n: int, rec: dict[str, Any]) -> None:
        if rec["status"] != "ok":
            failed.append(rec["key"])
        what = (f"{rec.get('time_s', float('nan')):.3f} s" if rec["status"] == "ok"
                else f"FAILED: {str(rec.get('reason')).splitlines()[0][:120]}")
        click.echo(f"[{i}/{n} {time.monotonic() - t0:5.0f}s] {rec['key']}: {what}")

    logging.getLogger("ipcgw").setLevel(logging.WARNING)
    from ns3_side.lab.cli import interrupt_on_term

    try:
        with interrupt_on_term():  # SIGTERM, like ^C, still removes the cell's namespaces
            run_experiment(exp, out, resume=resume, progress=progress,
                           log_dir=(out / "logs") if logs else None, prefix=prefix,
                           scheduler=scheduler)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; the running cell was cleaned up, "
                                   f"--resume continues ({out})") from None
    except (FileExistsError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"report: {build_report(out)}")
    if failed:
        raise click.ClickException(f"{len(failed)} of {total} cells failed (their reasons are in "
                                   f"the report and in {out}/results.jsonl); first: {failed[0]}")


@experiment.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(out: Path) -> None:
    """Rebuild report.md, results.csv and plots of OUT from its results.jsonl."""
    from .report import build_report

    click.echo(str(build_report(out)))


@experiment.command()
@click.argument("a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the comparison to this file.")
def compare(a: Path, b: Path, out: Path | None) -> None:
    """Compare two experiment directories measure by measure (A vs B)."""
    from .report import compare as do_compare

    text = do_compare(a, b)
    if out:
        out.write_text(text)
    click.echo(text)
