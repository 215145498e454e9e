"""Runs an experiment's cells, one JSON line each, resumable.

Each cell gets fresh namespaces (unique prefix), its own gateway and
processes, and a deadline (``timeout_s``). Whatever goes wrong inside a
cell — the simulation misses its real-time limit, a process dies, the
deadline passes, a transfer comes up short — becomes ``status: "failed"``
with the reason, and everything the cell made is removed before the next
one starts. Results are appended (and flushed) after every cell, so an
interrupted matrix loses at most the cell that was running; ``resume``
skips the keys already in ``results.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipcgw.testing import provenance

from .config import Cell, Experiment
from .control import PolicyServer
from .setups import Station, make_setup, wifi_path
from .workloads import CellFailed, _Procs, agent, run_workload

__all__ = ["RESULTS", "done_keys", "run_cell", "run_experiment"]

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
LEAD_S = 0.5  # reporter, mobility and workload start together this long after setup
PACKAGES = ("ns3", "cppyy", "pyroute2", "msgpack", "matplotlib")  # recorded with every run
TOOLS = ("iperf3", "mptcpize")


def done_keys(out_dir: Path) -> set[str]:
    path = out_dir / RESULTS
    keys: set[str] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                keys.add(json.loads(line)["key"])
            except (ValueError, KeyError):
                continue  # a line cut by the interruption
    return keys


def run_cell(cell: Cell, timeout_s: float, log_dir: Path | None = None,
             prefix: str = "ixp") -> dict[str, Any]:
    """One cell, start to clean up; never raises for a failure of the cell itself.

    Namespaces are ``<prefix><6 hex>-cli/-srv``: a distinct ``prefix`` keeps
    concurrent runs (a test beside a long matrix) out of each other's way."""
    rec: dict[str, Any] = {**cell.describe(), "status": "ok", "reason": None}
    started = time.monotonic()
    deadline = started + timeout_s
    rec["started"] = time.time()
    setup = make_setup(cell.setup, f"{prefix}{uuid.uuid4().hex[:6]}", log_dir)
    gateways: list[PolicyServer] = []  # one per station, in its client namespace
    n_paths = len(cell.setup.paths)
    try:
        with _Procs() as procs:
            setup.build(cell.seed)
            stations = setup.stations()
            if cell.policy.needs_gateway:
                for st in stations:
                    gateways.append(PolicyServer(cell.policy.spec or "", cell.policy.args,
                                                 cell.transport, st.client))
                    gateways[-1].start()
            urls = [g.url for g in gateways]
            url = urls[0] if urls else None
            setup.start(url, urls[1:])
            t0 = time.monotonic() + LEAD_S
            mob = cell.setup.mobility
            reporter = None
            if url and mob and not setup.reports_in_sim:
                reporter = procs.start(setup.client, agent(
                    "report", "--url", url, "--start", t0, "--start-m", mob.get("start_m", 30.0),
                    "--speed", mob.get("speed_mps", 5.0), "--path", wifi_path(cell.setup) or 2,
                    "--duration", timeout_s, "--seed", cell.seed))
            setup.begin(t0)
            time.sleep(max(0.0, t0 - time.monotonic()))
            results = _each_station(stations, lambda st: run_workload(cell, st, deadline,
                                                                      n_paths))
            if gateways and cell.setup.hold_s:
                # let the walk reach the handover, so its reaction time is measured
                # even when the workload ended first
                time.sleep(max(0.0, min(t0 + cell.setup.hold_s, deadline) - time.monotonic()))
            setup.check()
            if reporter is not None and reporter.poll() is not None:
                # the simulation's stand-in died: the policy ran blind, the cell is void
                err = reporter.stderr.read() if reporter.stderr else ""
                raise CellFailed(f"reporter exited with status {reporter.returncode}: "
                                 f"{' | '.join(err.strip().splitlines()[-2:])}")
            per = []
            for st, result in zip(stations, results, strict=True):
                m = {**result, **_loss_measures(setup, st.k)}
                if gateways:
                    m.update(_gateway_measures(gateways[st.k - 1], setup))
                per.append(m)
            rec.update(per[0])  # station 1 at the top level: the same columns as one station
            if len(per) > 1:
                rec["stations"] = [{"station": st.k, **m} for st, m in zip(stations, per,
                                                                           strict=True)]
            mobility = getattr(setup, "mobility", None)
            if mobility is not None:
                rec["mobility_trace"] = mobility.trace[::4]
    except Exception as exc:  # every failure of a cell is data; ^C is not (it propagates)
        rec["status"] = "failed"
        sim_failure = getattr(getattr(setup, "dp", None), "failure", None)
        rec["reason"] = (str(sim_failure) if sim_failure else
                         str(exc) if isinstance(exc, CellFailed) else f"{type(exc).__name__}: {exc}")
        log.debug("cell %s failed:\n%s", cell.key, traceback.format_exc())
    finally:
        _cleanup(gateways, setup)
    info = setup.info
    rec["dataplane_ran"] = info.get("dataplane")
    last = getattr(setup, "last_progress", None)
    if last:
        rec["sim_lag_s"] = last.get("lag")
    rec["wall_s"] = time.monotonic() - started
    return rec


def _cleanup(gateways: list[PolicyServer], setup: Any) -> None:
    for step in (*(g.stop for g in gateways), setup.down):
        try:
            step()
        except Exception as exc:  # keep cleaning
            log.warning("cleanup step failed: %s", exc)


def _each_station(stations: list[Station], fn: Callable[[Station], dict[str, Any]],
                  ) -> list[dict[str, Any]]:
    """``fn`` for every station at once (they share one simulation's real time); the
    first failure is the cell's."""
    if len(stations) == 1:
        return [fn(stations[0])]
    out: list[dict[str, Any] | BaseException] = [RuntimeError("did not run")] * len(stations)

    def one(i: int) -> None:
        try:
            out[i] = fn(stations[i])
        except BaseException as exc:  # handed to the caller below
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,), name=f"station-{st.k}")
               for i, st in enumerate(stations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for st, r in zip(stations, out, strict=True):
        if isinstance(r, BaseException):
            raise CellFailed(f"station {st.k}: {r}") from r
    return [r for r in out if isinstance(r, dict)]


def _loss_measures(setup: Any, station: int) -> dict[str, Any]:
    """What the paths lost for good (``p<i>_lost_pkts``, ``lost_pkts``) and, where the
    setup counts them, by cause (``p<i>_loss_<cause>``)."""
    args = (station,) if station > 1 else ()
    losses = setup.losses(*args)
    out: dict[str, Any] = {f"p{i}_lost_pkts": n for i, n in enumerate(losses, 1)}
    out["lost_pkts"] = (sum(n for n in losses if n is not None)
                        if any(n is not None for n in losses) else None)
    causes = getattr(setup, "loss_causes", None)
    for i, by_cause in enumerate(causes(*args) if causes else [], 1):
        for cause, n in sorted((by_cause or {}).items()):
            out[f"p{i}_loss_{cause}"] = n
    return out


def _gateway_measures(gateway: PolicyServer, setup: Any) -> dict[str, Any]:
    reactions = gateway.reactions(setup.sim_to_mono)
    ipc = gateway.ipc_delays_ms(setup.sim_to_mono)
    out: dict[str, Any] = {"reports": len(gateway.probe.reports),
                           "decisions": len(gateway.probe.decisions), "reactions": reactions}
    first = None
    if reactions:
        # the handover: the first decision that sets a backup flag (a policy's
        # first report may just confirm the flags the path already has)
        first = next((r for r in reactions if r["what"][-1] is True), None)
    if first is not None:
        out["reaction_ms"] = first["reaction_ms"]
        out["reaction_ipc_ms"] = first["ipc_ms"]
        out["reaction_seen_ms"] = first["seen_ms"]
        out["handover_sim_s"] = first["sim"]
    if ipc:
        out["ipc_median_ms"] = statistics.median(ipc)
    return out


Progress = Callable[[int, int, dict[str, Any]], None]


def _cell_on_worker(cell: Cell, timeout_s: float, log_dir: Path | None,
                    prefix: str) -> dict[str, Any]:
    """A cell on a Dask worker: the namespace prefix names the worker (a hash of its
    address), so workers sharing a host never collide, and ``worker`` is recorded."""
    import zlib

    from distributed import get_worker

    address = get_worker().address
    tag = f"{zlib.crc32(address.encode()) % 256:02x}"  # run_cell adds a unique part
    rec = run_cell(cell, timeout_s, log_dir, f"{prefix}{tag}")
    rec["worker"] = address
    return rec


def _connect(scheduler: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError("--scheduler needs Dask: pip install 'ipcgw[cluster]'") from None
    try:
        return Client(scheduler, timeout=10)  # type: ignore[no-untyped-call]  # untyped in distributed
    except OSError as exc:
        raise RuntimeError(f"no Dask scheduler answering at {scheduler}: {exc} "
                           "(start one: dask scheduler; workers: dask worker --nthreads 1 "
                           f"{scheduler}, as root)") from None


def run_experiment(exp: Experiment, out_dir: Path, resume: bool = False,
                   progress: Progress | None = None, log_dir: Path | None = None,
                   prefix: str = "ixp", scheduler: str | Any | None = None) -> Path:
    """Run every cell not yet in ``out_dir/results.jsonl``; returns that file.

    ``scheduler`` (a ``tcp://host:8786`` address or a ``distributed.Client``): the
    cells run on that Dask cluster, each on one worker (start workers with
    ``--nthreads 1``: a cell needs its cores for real time); this process still
    writes every result as it arrives, so the file stays resumable and the report
    the same. ``log_dir`` is then a path on each worker's host."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / RESULTS
    if results.exists() and results.stat().st_size and not resume:
        raise FileExistsError(f"{results} exists: pass --resume to continue it, "
                              "or choose another --out")
    if exp.source and Path(exp.source).exists():
        (out_dir / "config.toml").write_text(Path(exp.source).read_text())
    meta_path = out_dir / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.setdefault("runs", []).append({"versions": provenance(PACKAGES, TOOLS), "started": time.time()})
    meta["experiment"] = exp.to_json()
    meta_path.write_text(json.dumps(meta, indent=2))
    skip = done_keys(out_dir) if resume else set()
    cells = exp.cells()
    with results.open("a") as f:
        def record(i: int, rec: dict[str, Any]) -> None:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if progress is not None:
                progress(i, len(cells), rec)

        todo = [(i, cell) for i, cell in enumerate(cells, 1) if cell.key not in skip]
        if scheduler is None:
            for i, cell in todo:
                record(i, run_cell(cell, exp.timeout_s, log_dir, prefix))
        else:
            _on_cluster(scheduler, todo, exp.timeout_s, log_dir, prefix, record)
    return results


def _on_cluster(scheduler: str | Any, todo: list[tuple[int, Cell]], timeout_s: float,
                log_dir: Path | None, prefix: str,
                record: Callable[[int, dict[str, Any]], None]) -> None:
    from distributed import as_completed

    client = _connect(scheduler) if isinstance(scheduler, str) else scheduler
    try:
        futures = {client.submit(_cell_on_worker, cell, timeout_s, log_dir, prefix,
                                 pure=False, key=f"cell-{uuid.uuid4().hex[:8]}-{i}"): (i, cell)
                   for i, cell in todo}
        for fut in as_completed(futures):  # type: ignore[no-untyped-call]  # untyped in distributed
            i, cell = futures[fut]
            try:
                rec = fut.result()
            except Exception as exc:  # the worker died or could not run it: data, too
                rec = {**cell.describe(), "status": "failed",
                       "reason": f"on the cluster: {type(exc).__name__}: {exc}"}
            record(i, rec)
    finally:
        if isinstance(scheduler, str):
            client.close()
