"""Click commands of the MPTCP side: ``monitor`` and ``testbed up|down|status``.

Registered by ``ipcgw/cli.py`` (``main.add_command(monitor)``, ...); they
also run standalone: ``python -m ipcgw.mptcp.cli testbed up``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import click

from ipcgw.errors import IpcgwError
from ipcgw.mptcp.events import EventListener, format_event
from ipcgw.testbed import EndpointSpec, PathSpec, Testbed

__all__ = ["monitor", "testbed"]


@click.command()
@click.option("--netns", "-n", help="Watch this network namespace (default: our own).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=int, default=0, help="Stop after this many events (0: never).")
@click.option("--timeout", type=float, default=0.0, help="Stop after this many seconds (0: never).")
def monitor(netns: str | None, as_json: bool, count: int, timeout: float) -> None:
    """Print MPTCP path-manager events live, one line each, with every attribute.

    \b
    Tokens are printed as 0x and 8 hex digits (token=0xe3237b7a): paste them
    as they are into `ipcgw send ... token=0xe3237b7a`, which also takes
    plain decimal. Bare hex (as `ip mptcp monitor` prints it) is refused
    there. With --json a token is a JSON integer. Address and port print as
    10.0.1.1:5201, or [dead:beef::1]:5201 for IPv6.
    """
    try:
        listener = EventListener(netns)
    except (IpcgwError, OSError) as exc:
        raise click.ClickException(f"cannot listen to MPTCP events: {exc}") from None
    signal.signal(signal.SIGTERM, lambda *_: listener.stop())
    deadline = time.monotonic() + timeout if timeout else None
    seen = 0
    try:
        while not listener.stopped and (deadline is None or time.monotonic() < deadline):
            wait = None if deadline is None else max(0.01, deadline - time.monotonic())
            for ev in listener.events(timeout=wait):  # ends on stop or `wait` of silence
                if as_json:
                    line = json.dumps({"kind": ev.kind, "time": ev.time, **ev.attrs})
                else:
                    line = format_event(ev)
                click.echo(line)
                sys.stdout.flush()
                seen += 1
                if (count and seen >= count) or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    return
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()


def _endpoint(text: str) -> EndpointSpec:
    """``PATH:ID[:FLAGS]`` e.g. ``2:2:subflow`` or ``2:2:signal,backup``."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise click.BadParameter(f"endpoint must be PATH:ID[:FLAGS], got {text!r}")
    try:
        flags = parts[2] if len(parts) == 3 else "subflow"
        return EndpointSpec(int(parts[0]), int(parts[1]), flags)
    except ValueError:
        raise click.BadParameter(f"endpoint must be PATH:ID[:FLAGS], got {text!r}") from None


def _path(text: str) -> PathSpec:
    """``RATE_MBIT[/LOSS_PCT]`` per path, ``-`` for unshaped, e.g. ``10/1.5``."""
    rate, _, loss = text.partition("/")
    try:
        return PathSpec(None if rate in ("", "-") else float(rate), float(loss or 0))
    except ValueError:
        raise click.BadParameter(f"path must be RATE_MBIT[/LOSS_PCT], got {text!r}") from None


def _build(prefix: str, scenario: int | None, paths: tuple[str, ...], client_pm: str,
           server_pm: str, client_ep: tuple[str, ...], server_ep: tuple[str, ...]) -> Testbed:
    kw: dict[str, Any] = {"prefix": prefix, "client_pm": client_pm, "server_pm": server_pm}
    if paths:
        kw["paths"] = [_path(p) for p in paths]
    if client_ep:
        kw["client_endpoints"] = [_endpoint(e) for e in client_ep]
    if server_ep:
        kw["server_endpoints"] = [_endpoint(e) for e in server_ep]
    try:
        return Testbed.scenario(scenario, **kw) if scenario else Testbed(**kw)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def testbed() -> None:
    """Client and server namespaces joined by veth paths, with MPTCP set up."""
    require_root("ipcgw testbed (network namespaces, veth links, tc and sysctls)")


def require_root(what: str) -> None:
    """Say what needs root before the first syscall fails in its own words."""
    if os.geteuid() != 0:
        raise click.ClickException(f"{what} needs root: run it as root (e.g. sudo -E ipcgw ...)")


@testbed.command()
@click.option("--prefix", default="ipcgw", show_default=True,
              help="Namespaces are PREFIX-cli and PREFIX-srv.")
@click.option("--scenario", type=click.IntRange(1, 2),
              help="1: client subflow endpoint on path 2; 2: server signal endpoint on path 2.")
@click.option("--path", "paths", multiple=True, metavar="RATE[/LOSS]",
              help="One per path, e.g. --path 10 --path 10/2 (Mbit/s, loss %); default 2 "
                   "unshaped paths.")
@click.option("--client-pm", type=click.Choice(["kernel", "userspace"]), default="kernel",
              show_default=True)
@click.option("--server-pm", type=click.Choice(["kernel", "userspace"]), default="kernel",
              show_default=True)
@click.option("--client-endpoint", "client_ep", multiple=True, metavar="PATH:ID[:FLAGS]")
@click.option("--server-endpoint", "server_ep", multiple=True, metavar="PATH:ID[:FLAGS]")
def up(prefix: str, scenario: int | None, paths: tuple[str, ...], client_pm: str,
       server_pm: str, client_ep: tuple[str, ...], server_ep: tuple[str, ...]) -> None:
    """Create (or reconcile) the testbed; prints its status as JSON."""
    tb = _build(prefix, scenario, paths, client_pm, server_pm, client_ep, server_ep)
    try:
        tb.up()
    except IpcgwError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(tb.status(), indent=2))


@testbed.command()
@click.option("--prefix", default="ipcgw", show_default=True)
def down(prefix: str) -> None:
    """Remove both namespaces and everything in them."""
    Testbed(prefix=prefix).down()
    click.echo(f"removed {prefix}-cli and {prefix}-srv")


@testbed.command()
@click.option("--prefix", default="ipcgw", show_default=True)
def status(prefix: str) -> None:
    """Addresses, path-manager mode, limits and endpoints of both namespaces (JSON)."""
    click.echo(json.dumps(Testbed(prefix=prefix).status(), indent=2))


@click.group()
def _standalone() -> None:
    """MPTCP commands of ipcgw."""


_standalone.add_command(monitor)
_standalone.add_command(testbed)

if __name__ == "__main__":
    _standalone()
