"""Plans and runs a benchmark: every case, both placements, all references.

Order matters on a shared machine whose CPU speed drifts in phases of
seconds to minutes: every case of one payload size and placement (all
transports, ipcgw, raw Python, C, peers) forms a block, and a block runs in
``rounds`` interleaved rounds, each case getting 1/rounds of its time budget
per round, the order rotating. A ratio is then the median of its per-round
ratios (figures taken seconds apart), with their spread; the tables' p50 and
MB/s are of all rounds together. All gateway servers start first (idle
servers cost nothing) and stop last; every OS object is removed in
``finally`` blocks, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .cfloor import C_TRANSPORTS, WORK_US, CFloor
from .handler import SINK_OP
from .hist import Histogram
from .idle import RATES, measure_idle, measure_rate, measure_wake_floor
from .interleave import interleaved_p50
from .measure import Record, batch_for, latency_loop, merge_rounds, throughput_loop, warm_up
from .refs import PEER_KINDS, RAW_TRANSPORTS, SkipCase, make_ref
from .servers import (
    SYSCALL_TRANSPORTS,
    BenchServer,
    Netns,
    available_transports,
    crosses_netns,
    fresh_url,
)
from .system import client_cpu, loadavg, pin_self, placement_cpus, proc_cpu, thread_count

__all__ = ["Case", "Config", "estimate", "plan", "run"]

SIZES = (64, 1024, 64 * 1024, 1024 * 1024)
FRAMINGS = ("length:4", "delimited:nul")
QUICK_FRAMINGS = ("length:4",)


@dataclass
class Config:
    transports: list[str] | None = None  # None: every gateway transport that imports
    framings: list[str] = field(default_factory=lambda: list(FRAMINGS))
    sizes: list[int] = field(default_factory=lambda: list(SIZES))
    placements: list[str] = field(default_factory=lambda: ["same", "cross"])
    lat_time: float = 1.0  # seconds of timed round trips per case
    tp_time: float = 1.0  # seconds of one-way sending per case
    raw: bool = True
    c: bool = True
    peers: bool = True
    netns: bool = False
    quick: bool = False
    idle_time: float = 10.0  # seconds of the shm idle-CPU window (0: not measured)
    rounds: int = 5  # interleaved rounds per block (size x placement)
    rate_time: float = 2.0  # seconds per transport and message rate of the CPU-at-rate figure

    @classmethod
    def quick_config(cls) -> Config:
        return cls(framings=list(QUICK_FRAMINGS), lat_time=0.05, tp_time=0.05, quick=True,
                   idle_time=2.0, rounds=3, rate_time=0.5)


@dataclass
class Case:
    kind: str
    transport: str
    framing: str
    placement: str
    size: int

    @property
    def label(self) -> str:
        if self.kind == "idle":
            return f"idle CPU of an {self.transport} connection"
        framing = f" {self.framing}" if self.framing else ""
        return f"{self.kind} {self.transport}{framing} {self.placement} {_size(self.size)}"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1024 else f"{n} B"


# Start-up cost per case beyond its time budgets (spawning echo children,
# connecting, waiting for session threads), measured on a 2-vCPU VM.
_OVERHEAD = {"ipcgw": 0.08, "raw": 0.12, "c": 0.02, "peer": 0.25}


def plan(cfg: Config, gateway_transports: list[str]) -> list[Case]:
    cases: list[Case] = []
    for transport in gateway_transports:
        for size in cfg.sizes:
            for placement in cfg.placements:
                for framing in cfg.framings:
                    cases.append(Case("ipcgw", transport, framing, placement, size))
                if cfg.raw and transport in RAW_TRANSPORTS:
                    cases.append(Case("raw", transport, "", placement, size))
                if cfg.c and transport in C_TRANSPORTS:
                    cases.append(Case("c", transport, "", placement, size))
    if cfg.peers:
        for peer in PEER_KINDS:
            for size in cfg.sizes:
                for placement in cfg.placements:
                    cases.append(Case("peer", peer, "", placement, size))
    return cases


def estimate(cfg: Config, cases: list[Case], servers: int) -> float:
    per_case = cfg.lat_time * 1.2 + cfg.tp_time
    idle = cfg.idle_time + 1.0 if cfg.idle_time and any(c.transport == "shm" for c in cases) else 0
    sweep = sum(cfg.lat_time * 1.2 * (len(WORK_US) - 1) for c in cases
                if c.kind == "c" and c.placement == "cross")
    transports = {c.transport for c in cases if c.kind == "ipcgw"}
    rates = (len(transports) + 1) * len(RATES) * (cfg.rate_time + 0.6) if cfg.rate_time else 0
    interleaved = len(cfg.placements) * len(transports) * (7 * 0.25 + 0.3) if "shm" in transports else 0
    return (sum(per_case + _OVERHEAD[c.kind] * cfg.rounds for c in cases) + sweep
            + servers * 0.4 + 3.0 + idle + rates + interleaved)


def blocks(cases: list[Case]) -> list[list[Case]]:
    """Cases grouped by (size, placement), in plan order: the unit of interleaving."""
    out: dict[tuple[int, str], list[Case]] = {}
    for case in cases:
        out.setdefault((case.size, case.placement), []).append(case)
    return list(out.values())


def rotated(block: list[Case], r: int) -> list[Case]:
    """Round r's order: the block rotated by r * len / rounds-ish, so each case
    takes a different place in each round."""
    k = (r * max(1, len(block) // 3)) % max(1, len(block))
    return block[k:] + block[:k]


def _wait_threads(pid: int, baseline: int, timeout: float = 1.0) -> None:
    """Let the session thread of a closed client exit before the next CPU sample."""
    end = time.monotonic() + timeout
    while thread_count(pid) > baseline and time.monotonic() < end:
        time.sleep(0.005)


def _gateway_case(server: BenchServer, case: Case, cfg: Config, client_cpu_n: int) -> Record:
    import ipcgw
    from ipcgw.messages import Command

    rec = Record(case.kind, case.transport, case.framing, case.placement, case.size)
    pin_self(client_cpu_n)
    baseline = thread_count(server.pid)
    payload = os.urandom(case.size)
    try:
        with ipcgw.connect(server.url, timeout=10.0, name="ipcgw-bench") as client:
            if client.ping(payload) != payload:
                raise RuntimeError("Pong payload differs from Ping payload")
            warm_up(client.ping, payload, cfg.lat_time / 5)
            s0, c0 = proc_cpu(server.pid), client_cpu()
            rec.hist = latency_loop(client.ping, payload, cfg.lat_time)
            s1, c1 = proc_cpu(server.pid), client_cpu()
            rec.rtt_count = rec.hist.total
            rec.cpu_client_rtt, rec.cpu_server_rtt = c1 - c0, s1 - s0
            # One-way: a sink Command (request_id 0) gets no reply, so nothing waits unread;
            # the final ping's Pong comes after the server has handled every one.
            report = Command(0, SINK_OP, {"payload": payload})
            t0 = time.perf_counter()
            s0, c0 = proc_cpu(server.pid), client_cpu()
            rec.tp_msgs = throughput_loop(client.send, report, cfg.tp_time, batch_for(case.size))
            client.ping(b"", timeout=120.0)
            rec.tp_seconds = time.perf_counter() - t0
            s1, c1 = proc_cpu(server.pid), client_cpu()
            rec.cpu_client_tp, rec.cpu_server_tp = c1 - c0, s1 - s0
    finally:
        _wait_threads(server.pid, baseline)
    return rec


def _ref_case(case: Case, cfg: Config, server_cpu_n: int, client_cpu_n: int) -> Record:
    rec = Record(case.kind, case.transport, case.framing, case.placement, case.size)
    pin_self(client_cpu_n)
    payload = os.urandom(case.size)
    timeout = (cfg.lat_time + cfg.tp_time) * 4 + 30
    with make_ref(case.kind, case.transport, "pp", case.size, server_cpu_n, timeout) as ref:
        warm_up(ref.rtt, payload, cfg.lat_time / 5)
        s0, c0 = proc_cpu(ref.pid), client_cpu()
        rec.hist = latency_loop(ref.rtt, payload, cfg.lat_time)
        s1, c1 = proc_cpu(ref.pid), client_cpu()
        rec.rtt_count = rec.hist.total
        rec.cpu_client_rtt, rec.cpu_server_rtt = c1 - c0, s1 - s0
        ref.finish()
    with make_ref(case.kind, case.transport, "tp", case.size, server_cpu_n, timeout) as ref:
        t0 = time.perf_counter()
        s0, c0 = proc_cpu(ref.pid), client_cpu()
        rec.tp_msgs = throughput_loop(ref.send, payload, cfg.tp_time, batch_for(case.size))
        got = ref.finish()
        rec.tp_seconds = time.perf_counter() - t0
        s1, c1 = proc_cpu(ref.pid), client_cpu()
        rec.cpu_client_tp, rec.cpu_server_tp = c1 - c0, s1 - s0
        if got != rec.tp_msgs * case.size:
            raise RuntimeError(f"echo counted {got} bytes, sent {rec.tp_msgs * case.size}")
    return rec


def _c_case(cfloor: CFloor, case: Case, cfg: Config, server_cpu_n: int,
            client_cpu_n: int) -> Record:
    """The C row; across CPUs also the floor search (cfloor.py says why): the same
    round trip with the echo adding each of WORK_US of busy work."""
    rec = Record(case.kind, case.transport, case.framing, case.placement, case.size)
    if case.placement == "cross":
        from .cfloor import pick_floor

        hists: dict[float, Histogram] = {}
        for work in WORK_US[1:]:
            hists[work] = cfloor.run(case.transport, "pp", case.size, cfg.lat_time, client_cpu_n,
                                     server_cpu_n, work).hist
    pp = cfloor.run(case.transport, "pp", case.size, cfg.lat_time, client_cpu_n, server_cpu_n)
    if case.placement == "cross":
        hists[0] = pp.hist
        floor, floor_work = pick_floor({w: h.percentile(50) / 1000 for w, h in hists.items()
                                        if h.total})
        rec.extra.update(work_hists=hists, floor_us=round(floor, 3), floor_work_us=floor_work)
    rec.hist, rec.rtt_count = pp.hist, pp.n
    rec.cpu_client_rtt = pp.client_cpu
    # The echo's CPU covers the warm-up too: scale it to the timed round trips.
    rec.cpu_server_rtt = pp.server_cpu * pp.n / max(1, pp.n + pp.warmup)
    tp = cfloor.run(case.transport, "tp", case.size, cfg.tp_time, client_cpu_n, server_cpu_n)
    rec.tp_msgs, rec.tp_seconds = tp.n, tp.elapsed
    rec.cpu_client_tp, rec.cpu_server_tp = tp.client_cpu, tp.server_cpu
    return rec


def _idle_case(cfg: Config, servers: dict[tuple[str, str], BenchServer]) -> dict[str, Any]:
    """The shm idle-CPU figure on the run's own shm server (length:4 when it ran).
    The client sits on the cross placement's client CPU, like the other targets'."""
    framings = sorted(cfg.framings, key=lambda f: f != "length:4")
    server = next((servers[("shm", f)] for f in framings if ("shm", f) in servers), None)
    if server is None or not server.alive():
        return {"error": "no shm server running (see the notes)"}
    try:
        client_n: int | None = placement_cpus("cross")[1]
    except ValueError:
        client_n = None  # one usable CPU: leave the client unpinned
    pin_self(None)
    try:
        result = measure_idle(server.url, server.pid, cfg.idle_time, client_n)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:400]}
    result["server_cpu"] = server.cpu
    return result


def _interleaved_case(cfg: Config, servers: dict[tuple[str, str], BenchServer],
                      placement: str) -> dict[str, Any] | None:
    """The shm p50 target in interleaved rounds (bench/interleave.py says why), when
    the run has shm and a syscall transport at 64 B, ``placement``, length:4."""
    if not (64 in cfg.sizes and placement in cfg.placements and "length:4" in cfg.framings):
        return None
    ab = {t: srv for (t, f), srv in servers.items()
          if f == "length:4" and (t == "shm" or t in SYSCALL_TRANSPORTS) and srv.alive()}
    if "shm" not in ab or len(ab) < 2:
        return None
    try:
        return interleaved_p50(ab, placement_cpus(placement)[1], rounds=3 if cfg.quick else 7,
                               slice_s=max(0.05, cfg.lat_time / 5))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:400]}


#: The ``transport`` of the wake-up floor's rows in ``cpu_at_rates``.
FLOOR = "floor"


def _rates_case(cfg: Config, servers: dict[tuple[str, str], BenchServer]
                ) -> list[dict[str, Any]]:
    """CPU of server and client at a few message rates, per transport (bench/idle.py):
    the run's length:4 servers, the client on the cross placement's client CPU."""
    try:
        client_n: int | None = placement_cpus("cross")[1]
    except ValueError:
        client_n = None
    framing = "length:4" if "length:4" in cfg.framings else cfg.framings[0]
    out: list[dict[str, Any]] = []
    pin_self(None)
    for (transport, fr), server in sorted(servers.items()):
        if fr != framing or not server.alive():
            continue
        for rate in RATES:
            try:
                item = measure_rate(server.url, server.pid, rate, cfg.rate_time, client_n)
            except Exception as exc:
                item = {"error": f"{type(exc).__name__}: {exc}"[:300], "rate": rate}
            item.update(transport=transport, framing=fr, server_cpu=server.cpu)
            out.append(item)
    if out:
        for rate in RATES:
            try:
                floor = measure_wake_floor(rate, cfg.rate_time, client_n)
            except Exception as exc:
                floor = {"error": f"{type(exc).__name__}: {exc}"[:300], "rate": rate}
            floor.update(transport=FLOOR, framing="")
            out.append(floor)
    return out


@contextlib.contextmanager
def _servers(cfg: Config, transports: list[str], tmp: str, notes: list[str]
             ) -> Iterator[dict[tuple[str, str], BenchServer]]:
    servers: dict[tuple[str, str], BenchServer] = {}
    with contextlib.ExitStack() as stack:
        netns = stack.enter_context(Netns()).name if cfg.netns else None
        try:
            for transport in transports:
                for framing in cfg.framings:
                    url = fresh_url(transport, framing, tmp)
                    try:
                        servers[(transport, framing)] = BenchServer(url, 0, netns, tmp)
                    except Exception as exc:
                        notes.append(f"ipcgw {transport} {framing}: server did not start: {exc}")
            yield servers
        finally:
            for server in servers.values():
                server.stop()


def run(cfg: Config, progress: Callable[[Case | None, int, int], None] | None = None
        ) -> dict[str, Any]:
    """Run every planned case; returns the results document (see report.py)."""
    from .system import machine_info

    started = time.monotonic()
    busy0, ours0 = _machine_busy(), _own_cpu()
    info = machine_info()
    notes: list[str] = []
    transports, missing = available_transports()
    notes += missing
    if cfg.transports is not None:
        transports = [t for t in transports if t in cfg.transports]
    if cfg.netns:
        for t in transports:
            if not crosses_netns(t):
                notes.append(f"{t}: skipped with --netns (does not cross network namespaces)")
        transports = [t for t in transports if crosses_netns(t)]
        notes.append("--netns: each gateway server ran in its own network namespace")
    placements = []
    for p in cfg.placements:
        try:
            placement_cpus(p)
            placements.append(p)
        except ValueError as exc:
            notes.append(f"placement {p} skipped: {exc}")
    cfg.placements = placements
    cfloor = CFloor()
    if cfg.c:
        note = cfloor.build()
        if note:
            notes.append(note)
    no_ref = [t for t in transports if t not in RAW_TRANSPORTS]
    if no_ref and (cfg.raw or cfg.c):
        notes.append(f"{', '.join(no_ref)}: no raw-Python or C reference (ipcgw rows only)")
    if cfg.raw and "shm" in transports:
        from .shmring import IMPL

        notes.append(f"raw shm reference: ipcgw's own rings ({IMPL} implementation), layout 3")
    cases = plan(cfg, transports)
    records: list[Record] = []
    shm_idle: dict[str, Any] | None = None
    shm_interleaved: dict[str, Any] | None = None
    shm_interleaved_same: dict[str, Any] | None = None
    cpu_at_rates: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ipcgw-bench-") as tmp, \
            _servers(cfg, transports, tmp, notes) as servers:
        total = len(cases)
        rounds = max(1, cfg.rounds)
        per_round = dataclasses.replace(cfg, lat_time=cfg.lat_time / rounds,
                                        tp_time=cfg.tp_time / rounds)
        try:
            step = 0
            for block in blocks(cases):
                got: dict[tuple[str, str, str, str, int], list[Record]] = {}
                for r in range(rounds):
                    for case in rotated(block, r):
                        if progress:
                            progress(case, step // rounds, total)
                        step += 1
                        rec = _one_case(case, per_round, servers, cfloor, notes)
                        if rec is not None:
                            got.setdefault(rec.key, []).append(rec)
                records += [merge_rounds(recs) for recs in got.values()]
            if cfg.idle_time > 0 and "shm" in transports:
                if progress:
                    progress(Case("idle", "shm", "", "", 0), total, total)
                shm_idle = _idle_case(cfg, servers)
            shm_interleaved = _interleaved_case(cfg, servers, "cross")
            shm_interleaved_same = _interleaved_case(cfg, servers, "same")
            if cfg.rate_time > 0:
                if progress:
                    progress(Case("rate", "every transport", "", "", 0), total, total)
                cpu_at_rates = _rates_case(cfg, servers)
        finally:
            pin_self(None)
            if progress:
                progress(None, total, total)
    info["loadavg_end"] = loadavg()
    busy1, ours1 = _machine_busy(), _own_cpu()
    if busy0 is not None and busy1 is not None:
        cores = os.cpu_count() or 1
        wall = time.monotonic() - started
        others = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        info["others_cpu"] = {"cpu_s": round(others, 1), "cores": cores, "wall_s": round(wall, 1),
                              "percent_of_machine": round(others / (wall * cores) * 100, 1)}
    return {
        "machine": info,
        "config": {
            "transports": transports, "framings": cfg.framings, "sizes": cfg.sizes,
            "placements": cfg.placements, "placement_cpus": {p: dict(zip(
                ("server", "client"), placement_cpus(p), strict=True)) for p in cfg.placements},
            "lat_time_s": cfg.lat_time, "tp_time_s": cfg.tp_time, "quick": cfg.quick,
            "netns": cfg.netns, "raw": cfg.raw, "c": cfg.c, "peers": cfg.peers,
            "idle_time_s": cfg.idle_time, "rounds": cfg.rounds, "rate_time_s": cfg.rate_time,
            "work_us": list(WORK_US),
        },
        "notes": notes,
        "duration_s": round(time.monotonic() - started, 1),
        "records": records,
        "shm_idle": shm_idle,
        "shm_interleaved": shm_interleaved,
        "shm_interleaved_same": shm_interleaved_same,
        "cpu_at_rates": cpu_at_rates,
    }


def _machine_busy() -> float | None:
    """CPU-seconds every CPU spent not idle so far (``/proc/stat``), steal excluded."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU-seconds of this process and its reaped children (servers, echoes, C runs)."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def _one_case(case: Case, cfg: Config, servers: dict[tuple[str, str], BenchServer],
              cfloor: CFloor, notes: list[str]) -> Record | None:
    """One round of one case; None when it cannot run here (the notes say why)."""
    server_n, client_n = placement_cpus(case.placement)
    loads = loadavg()
    load1 = loads[0] if loads else None
    try:
        if case.kind == "ipcgw":
            server = servers.get((case.transport, case.framing))
            if server is None:
                return None  # its start-up failure is in the notes
            if not server.alive():
                raise RuntimeError(f"server died: {server.log()}")
            rec = _gateway_case(server, case, cfg, client_n)
        elif case.kind == "c":
            if case.transport not in cfloor.binaries:
                return None
            rec = _c_case(cfloor, case, cfg, server_n, client_n)
        else:
            rec = _ref_case(case, cfg, server_n, client_n)
    except SkipCase as exc:
        note = f"{case.kind} {case.transport}: {exc}"
        if note not in notes:
            notes.append(note)
        return None
    except Exception as exc:
        rec = Record(case.kind, case.transport, case.framing, case.placement,
                     case.size, note=f"error: {type(exc).__name__}: {exc}"[:400])
    rec.load1 = load1
    return rec

