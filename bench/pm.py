"""``ipcgw bench --pm``: path-manager commands through the real gateway, lean vs pyroute2.

What a simulation pays for a kernel command, next to what it pays for a Ping
on the same connection: ``ipcgw serve --handler mptcp`` runs in a namespace of
its own (a veth pair and two endpoints in it, nothing in the caller's
namespace changes), the client outside, over unix and shm, pinned to one CPU
and across two. The same server with ``lean=False`` (every command through
pyroute2) is the comparison. In-process figures split the round trip: the
handler alone (``on_message``), ``PathManager`` alone, and the kernel floor (a
pre-built request and its answer on a raw netlink socket, no parsing).

Goal (issue #16): ``limits.get`` and ``endpoint.set_flags`` within the
transport's ping + 20 µs. Rounds alternate the two servers so that other
people's load on the machine falls on both alike; the load is recorded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipcgw.errors import ServerStartError
from ipcgw.messages import Command, Result
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.testing import provenance

from .servers import BenchServer, Netns

__all__ = ["PmConfig", "Pyroute2Handler", "run_pm"]

RESULTS = Path(__file__).resolve().parent / "results" / "pm.md"
OPS = ("ping", "limits.get", "endpoint.set_flags")
GOAL_US = 20.0


class Pyroute2Handler(MptcpHandler):
    """The mptcp handler with every command through pyroute2: the comparison."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(lean=False, **kw)


@dataclass
class PmConfig:
    transports: list[str] = field(default_factory=lambda: ["unix", "shm"])
    placements: list[str] = field(default_factory=lambda: ["same", "cross"])
    samples: int = 2000  # per op, path, transport and placement
    rounds: int = 4
    shm_spins: list[int] = field(default_factory=lambda: [100, 250])  # extra client spin_us rows
    out: Path = RESULTS

    @classmethod
    def quick(cls) -> PmConfig:
        return cls(samples=300, rounds=2)


# -- the namespace -------------------------------------------------------------------


class PmNetns(Netns):
    """A namespace with a veth pair (both ends inside) and endpoints 1 and 2 on it."""

    ADDRS = ("10.231.0.1", "10.231.0.2")

    def __init__(self) -> None:
        self.name = f"ipcgwpm{os.getpid()}"

    def __enter__(self) -> PmNetns:
        super().__enter__()  # the namespace, loopback up
        ip = ["ip", "-n", self.name]
        try:
            for cmd in (["link", "add", "pmv0", "type", "veth", "peer", "name", "pmv1"],
                        ["addr", "add", f"{self.ADDRS[0]}/24", "dev", "pmv0"],
                        ["addr", "add", f"{self.ADDRS[1]}/24", "dev", "pmv1"],
                        ["link", "set", "pmv0", "up"], ["link", "set", "pmv1", "up"]):
                subprocess.run([*ip, *cmd], check=True, capture_output=True)
            from ipcgw.mptcp.pm import PathManager

            with PathManager(self.name, lean=False) as pm:
                for i, addr in enumerate(self.ADDRS, 1):
                    pm.add_endpoint(addr, id=i, flags="subflow", ifindex=None)
        except BaseException:
            self.close()
            raise
        return self


class PmServer(BenchServer):
    """``ip netns exec NS python -m ipcgw serve --handler H`` pinned to ``cpu``."""

    def __init__(self, url: str, handler: str, netns: str, cpu: int) -> None:
        try:
            super().__init__(url, cpu, netns, handler=handler)
        except ServerStartError as exc:
            raise ServerStartError(f"pm bench server did not start: {exc}") from None


# -- timing --------------------------------------------------------------------------


def _time(fn: Callable[[], object], n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)


def _pct(samples: list[int], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p / 100))] / 1000 if s else float("nan")


def _ops(call: Callable[..., Any], ping: Callable[[], Any]) -> dict[str, Callable[[], object]]:
    flip = [False]

    def set_flags() -> object:
        flip[0] = not flip[0]  # a real change every time: MP_PRIO work, were there subflows
        return call("endpoint.set_flags", id=1, backup=flip[0])

    return {"ping": ping, "limits.get": lambda: call("limits.get"),
            "endpoint.set_flags": set_flags}


@dataclass
class Row:
    transport: str
    placement: str
    path: str  # lean | pyroute2
    samples: dict[str, list[int]] = field(default_factory=lambda: {op: [] for op in OPS})


def _gateway_rows(cfg: PmConfig, ns: PmNetns, log: Callable[[str], None]) -> list[Row]:
    from .system import placement_cpus

    rows: list[Row] = []
    tmp = tempfile.mkdtemp(prefix="ipcgw-bench-pm-")
    try:
        for transport in cfg.transports:
            for placement in cfg.placements:
                spins: list[int | None] = [None]
                if transport == "shm" and placement == "cross":
                    spins += cfg.shm_spins  # same servers, one client per spin, rounds alternate
                log(f"  {transport} {placement} ...")
                rows += _one_case(cfg, ns, tmp, transport, placement, placement_cpus(placement),
                                  spins)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(tmp)
    return rows


def _one_case(cfg: PmConfig, ns: PmNetns, tmp: str, transport: str, placement: str,
              cpus: tuple[int, int], spins: list[int | None]) -> list[Row]:
    import ipcgw

    from .servers import fresh_url
    from .system import pin_self

    handlers = {"lean": "mptcp", "pyroute2": "ipcgw_bench.pm:Pyroute2Handler"}
    servers: dict[str, PmServer] = {}
    clients: dict[tuple[str, int | None], Any] = {}
    rows = {(path, spin): Row(transport if spin is None else f"shm, client spin_us={spin}",
                              placement, path) for spin in spins for path in handlers}
    try:
        for path, handler in handlers.items():
            servers[path] = PmServer(fresh_url(transport, "length:4", tmp), handler, ns.name,
                                     cpus[0])
        pin_self(cpus[1])
        for (path, spin) in rows:
            url = servers[path].url
            clients[path, spin] = ipcgw.connect(url if spin is None else
                                                _with_param(url, "spin_us", spin))
        per_round = max(1, cfg.samples // cfg.rounds)
        payload = b"x" * 64
        for _ in range(cfg.rounds):
            for key, client in clients.items():
                ops = _ops(client.command, functools.partial(client.ping, payload))
                for fn in ops.values():
                    _time(fn, 50, [])  # warm up
                for op, fn in ops.items():
                    _time(fn, per_round, rows[key].samples[op])
    finally:
        for c in clients.values():
            with contextlib.suppress(Exception):
                c.close()
        for s in servers.values():
            s.stop()
        pin_self(None)
    return sorted(rows.values(), key=lambda r: (r.transport != transport, r.transport))


def _with_param(url: str, key: str, value: object) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


class _Session:
    id = 1
    name = "bench"
    closed = False

    def send(self, msg: object) -> None:
        pass

    def post(self, msg: object) -> None:
        pass


def _handler_figures(h: MptcpHandler) -> dict[str, Callable[[], object]]:
    session = _Session()

    def call(op: str, **args: Any) -> object:
        r = h.on_message(session, Command(1, op, args))
        assert isinstance(r, Result) and r.ok, r
        return r

    flip = [False]

    def pm_flags() -> None:
        flip[0] = not flip[0]
        h.pm.set_endpoint_flags(1, flip[0])

    return {
        "handler limits.get": lambda: call("limits.get"),
        "handler endpoint.set_flags": _ops(call, lambda: None)["endpoint.set_flags"],
        "PathManager limits.get": h.pm.limits,
        "PathManager endpoint.set_flags": pm_flags,
    }


def _raw_figures(raw: Any) -> dict[str, Callable[[], object]]:
    """The kernel floor: a pre-built request, one recv, no parsing."""
    from ipcgw.mptcp import genl
    from ipcgw.mptcp.lean import ADDR_FLAGS, ADDR_ID, ATTR_ADDR

    buf = bytearray(4096)
    get = raw.template(genl.MPTCP_PM_CMD_GET_LIMITS, (), want_reply=True).fill(1, [])
    flags = raw.template(genl.MPTCP_PM_CMD_SET_FLAGS,
                         ((ATTR_ADDR, ((ADDR_ID, "B"), (ADDR_FLAGS, "I"))),)).fill(1, [1, 2])

    def once(msg: bytearray) -> Callable[[], object]:
        return lambda: (raw.sock.send(msg), raw.sock.recv_into(buf))

    return {"raw limits.get": once(get), "raw endpoint.set_flags": once(flags)}


def _inprocess(cfg: PmConfig, ns: PmNetns) -> dict[str, dict[str, list[int]]]:
    """Handler alone, PathManager alone, kernel floor; pinned to one CPU."""
    from ipcgw.mptcp.lean import LeanPM

    from .system import pin_self, placement_cpus

    def measure(figures: dict[str, Callable[[], object]], cell: dict[str, list[int]]) -> None:
        for name, fn in figures.items():
            _time(fn, 100, [])
            _time(fn, cfg.samples, cell.setdefault(name, []))

    out: dict[str, dict[str, list[int]]] = {}
    pin_self(placement_cpus("same")[1])
    try:
        for path, lean in (("lean", True), ("pyroute2", False)):
            h = MptcpHandler(netns=ns.name, listen_events=False, lean=lean)
            try:
                measure(_handler_figures(h), out.setdefault(path, {}))
            finally:
                h.close()
        with LeanPM(ns.name) as raw:
            measure(_raw_figures(raw), out.setdefault("kernel floor", {}))
    finally:
        pin_self(None)
    return out


# -- the report ----------------------------------------------------------------------


def _conditions(load_before: list[float], load_after: list[float], seconds: float,
                cfg: PmConfig) -> list[str]:
    m = provenance()
    return [
        f"- {m['date']}, kernel {m['kernel']}, {m['cpu_model']}, {m['cores']} CPUs, "
        f"Python {m['python']}, ipcgw {m['ipcgw_commit']}",
        f"- load average before {' '.join(map(str, load_before))}, after "
        f"{' '.join(map(str, load_after))} (other engineers share this machine: "
        "absolute figures are noisy; lean and pyroute2 alternate in rounds, so they share the noise)",
        f"- {cfg.samples} samples per cell in {cfg.rounds} rounds; run took {seconds:.0f} s; "
        "p50/p99 in µs, 64 B ping, server in a namespace, client outside; "
        "same = both on CPU 0, cross = server CPU 0, client CPU 1",
    ]


def _fmt(samples: list[int]) -> str:
    return f"{_pct(samples, 50):.1f} / {_pct(samples, 99):.0f}"


def render(rows: list[Row], inproc: dict[str, dict[str, list[int]]], conditions: list[str]) -> str:
    lines = ["# Path-manager commands through the gateway (`ipcgw bench --pm`)", "",
             *conditions, "",
             f"Goal: `limits.get` and `endpoint.set_flags` p50 within ping p50 + {GOAL_US:.0f} µs.",
             "",
             "| transport | placement | PM path | ping | limits.get | endpoint.set_flags "
             "| limits - ping | set_flags - ping |",
             "|---|---|---|---|---|---|---|---|"]

    def mark(d: float) -> str:
        return f"{d:+.1f}{' ✓' if d <= GOAL_US else ' ✗'}"

    for r in rows:
        ping = _pct(r.samples["ping"], 50)
        d_lim = _pct(r.samples["limits.get"], 50) - ping
        d_sf = _pct(r.samples["endpoint.set_flags"], 50) - ping
        lines.append(f"| {r.transport} | {r.placement} | {r.path} | {_fmt(r.samples['ping'])} | "
                     f"{_fmt(r.samples['limits.get'])} | {_fmt(r.samples['endpoint.set_flags'])} | "
                     f"{mark(d_lim)} | {mark(d_sf)} |")
    from ipcgw.transports.shm import DEFAULT_SPIN_US

    spun = [r for r in rows if r.transport.startswith("shm") and r.placement == "cross"]
    if spun:
        lines += ["", "shm across CPUs: share of round trips longer than the client's spin "
                  "(from then on it sleeps on an eventfd and pays the wake-up):", "",
                  "| client spin_us | PM path | ping | limits.get | endpoint.set_flags |",
                  "|---|---|---|---|---|"]
        for r in spun:
            spin = int(r.transport.rpartition("=")[2]) if "=" in r.transport else DEFAULT_SPIN_US
            share = [sum(x > spin * 1000 for x in r.samples[op]) / max(1, len(r.samples[op]))
                     for op in OPS]
            lines.append(f"| {spin} | {r.path} | " + " | ".join(f"{x:.0%}" for x in share) + " |")
    lines += ["", "In-process (one CPU), p50 / p99 µs:", "",
              "| figure | " + " | ".join(inproc) + " |", "|---|" + "---|" * len(inproc)]
    names = list(dict.fromkeys(n for cell in inproc.values() for n in cell))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            _fmt(cell[name]) if name in cell else "" for cell in inproc.values()) + " |")
    lines += ["", "`raw` = a pre-built request and one `recv` on a netlink socket, no parsing: "
              "what the kernel and two syscalls cost. Endpoint SET_FLAGS walks the host-wide "
              "MPTCP token hash (`mptcp_token_iter_next`, 32768 buckets here) on every call, "
              "whatever the flags, so its floor is the kernel's, not ipcgw's.", ""]
    return "\n".join(lines)


def run_pm(cfg: PmConfig, log: Callable[[str], None] = print) -> Path:
    """Run everything, write ``cfg.out``; needs root."""
    from .system import loadavg

    if os.geteuid() != 0:
        raise PermissionError("ipcgw bench --pm needs root (it makes a network namespace)")
    load_before, started = loadavg(), time.monotonic()
    with PmNetns() as ns:
        log(f"pm bench in namespace {ns.name}: gateway round trips")
        rows = _gateway_rows(cfg, ns, log)
        log("  in-process: handler, PathManager, kernel floor")
        inproc = _inprocess(cfg, ns)
    text = render(rows, inproc, _conditions(load_before, loadavg(), time.monotonic() - started, cfg))
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(text)
    return cfg.out
