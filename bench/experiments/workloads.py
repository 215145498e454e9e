"""Running one workload in the namespaces and turning its output into measures.

Every program is a child process with a deadline; whatever happens, every
child started here is killed and reaped before the function returns. A
wrong byte count or checksum is a failure, not a measure: the ground truth
of a file transfer is known.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .config import Cell
from .video import score

__all__ = ["CellFailed", "run_workload"]

ROOT = Path(__file__).resolve().parents[2]
PORT = 5201


class CellFailed(Exception):
    """The cell did not produce a valid measurement (the message says why)."""


class _Procs:
    """Children of one workload, all killed on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, netns: str, argv: list[str]) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> _Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=5)


def agent(mode: str, *args: Any) -> list[str]:
    return [sys.executable, "-P", "-m", "ipcgw_bench.experiments.agent", mode, *map(str, args)]


def _wait_ready(proc: subprocess.Popen[str], deadline: float, what: str) -> None:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if '"ready"' in line:
                return
        elif proc.poll() is not None:
            break
    err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
    raise CellFailed(f"{what} not ready: {_tail(err) or 'timeout'}")


def _tail(text: str, n: int = 3) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-n:])


def _result(proc: subprocess.Popen[str], deadline: float, what: str) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CellFailed(f"timeout: {what} still running at the cell's deadline") from None
    if proc.returncode != 0:
        raise CellFailed(f"{what} exited with status {proc.returncode}: {_tail(err)}")
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise CellFailed(f"{what} printed no result: {_tail(err)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def client_paths(setup: Any, n_paths: int) -> dict[str, int]:
    """Client address -> path of a setup whose addresses are not all 10.0.<path>.1: an
    ns-3 lte path's client address is the UE's (7.0.0.2). ``setup`` is a setup or one
    of its stations (``.setup``); only station 1 can have an lte path."""
    dp = getattr(getattr(setup, "setup", setup), "dp", None)
    if dp is None or not hasattr(dp, "client_addr"):
        return {}
    return {dp.client_addr(i): i for i in range(1, n_paths + 1)}


def subflow_measures(stats: dict[str, Any], n_paths: int,
                     addr_paths: dict[str, int] | None = None) -> dict[str, Any]:
    """Per path (by the subflow's client address: ``addr_paths``, else 10.0.<path>.x):
    bytes, retransmissions."""
    out: dict[str, Any] = {}
    subflows = stats.get("subflows") or []
    for i in range(1, n_paths + 1):
        out[f"p{i}_bytes"] = 0
        out[f"p{i}_retrans"] = 0
        out[f"p{i}_subflows"] = 0
    for sf in subflows:
        # The sender is the server; a joined subflow may go to its path-1
        # address, so the *client's* address (10.0.<path>.1) names the path.
        addr = sf.get("daddr") or ""
        try:
            path = (addr_paths or {}).get(addr) or int(addr.split(".")[2])
        except (IndexError, ValueError):
            continue
        if path < 1 or path > n_paths:
            continue
        out[f"p{path}_bytes"] += int(sf.get("bytes_sent") or 0)
        out[f"p{path}_retrans"] += int(sf.get("total_retrans") or 0)
        out[f"p{path}_subflows"] += 1
    out["retrans"] = sum(out[f"p{i}_retrans"] for i in range(1, n_paths + 1))
    out["bytes_sent_total"] = sum(out[f"p{i}_bytes"] for i in range(1, n_paths + 1))
    out["subflows"] = len(subflows)
    return out


def run_file(cell: Cell, setup: Any, deadline: float, n_paths: int) -> dict[str, Any]:
    size = cell.workload.size
    cc = cell.workload.params.get("cc", "cubic")
    with _Procs() as procs:
        srv = procs.start(setup.server, agent("serve-file", "--port", PORT, "--size", size,
                                              "--seed", cell.seed, "--cc", cc))
        _wait_ready(srv, deadline, "file server")
        cli = procs.start(setup.client, agent(
            "fetch-file", "--addr", setup.server_addr(1), "--port", PORT, "--size", size,
            "--timeout", max(1.0, deadline - time.monotonic()), "--cc", cc))
        got = _result(cli, deadline, "file client")
        sent = _result(srv, deadline, "file server")
    if got["received"] != size:
        raise CellFailed(f"received {got['received']} of {size} bytes")
    if got["sha256"] != sent["sha256"]:
        raise CellFailed("checksum mismatch")
    return {"bytes": got["received"], "checksum_ok": True,
            "time_s": got["t_last_recv"] - sent["t_first_sent"],
            **subflow_measures(sent, n_paths, client_paths(setup, n_paths)),
            "kernel": sent.get("connection"),
            "subflow_stats": sent.get("subflows")}


def run_video(cell: Cell, setup: Any, deadline: float, n_paths: int) -> dict[str, Any]:
    p = cell.workload.params
    fps, bitrate, duration = float(p["fps"]), float(p["bitrate_mbit"]), float(p["duration_s"])
    frames = max(1, round(fps * duration))
    cc = p.get("cc", "cubic")
    with _Procs() as procs:
        srv = procs.start(setup.server, agent(
            "serve-video", "--port", PORT, "--bitrate", bitrate, "--fps", fps,
            "--duration", duration, "--seed", cell.seed, "--cc", cc))
        _wait_ready(srv, deadline, "video server")
        cli = procs.start(setup.client, agent(
            "fetch-video", "--addr", setup.server_addr(1), "--port", PORT, "--frames", frames,
            "--timeout", max(1.0, deadline - time.monotonic()), "--cc", cc))
        got = _result(cli, deadline, "video client")
        if "error" in got:
            raise CellFailed(f"video client: {got['error']}")
        sent = _result(srv, deadline, "video server")
    arrivals = got["arrivals"] + [None] * (frames - len(got["arrivals"]))
    s = score(arrivals, fps, float(p["startup_s"]), start=got["t0"])
    done = [a for a in arrivals if a is not None]
    return {"bytes": got["received"], "time_s": (max(done) - got["t0"]) if done else None,
            "frames": s.frames, "frames_on_time": s.on_time, "on_time_ratio": s.on_time_ratio,
            "stalls": s.stalls, "stall_time_s": s.stall_time_s, "max_late_s": s.max_late_s,
            "late_sends": sent.get("late_sends"),
            **subflow_measures(sent, n_paths, client_paths(setup, n_paths)),
            "subflow_stats": sent.get("subflows")}


def run_iperf3(cell: Cell, setup: Any, deadline: float, n_paths: int) -> dict[str, Any]:
    """iperf3 unmodified, made MPTCP by ``mptcpize run`` (LD_PRELOAD), download (-R)."""
    for prog in ("iperf3", "mptcpize"):
        if shutil.which(prog) is None:
            raise CellFailed(f"{prog} is not installed")
    size = cell.workload.size
    with _Procs() as procs:
        srv = procs.start(setup.server, ["mptcpize", "run", "iperf3", "-s", "-1", "-p",
                                         str(PORT), "-J"])
        # iperf3 -s prints nothing until a test ends: wait for its listening socket
        end = min(deadline, time.monotonic() + 10)
        while time.monotonic() < end:
            ss = subprocess.run(["ip", "netns", "exec", setup.server, "ss", "-Hltn",
                                 f"sport = :{PORT}"], capture_output=True, text=True)
            if ss.stdout.strip():
                break
            if srv.poll() is not None:
                raise CellFailed(f"iperf3 server died: {_tail(srv.stderr.read() if srv.stderr else '')}")
            time.sleep(0.05)
        cli = procs.start(setup.client, ["mptcpize", "run", "iperf3", "-c", setup.server_addr(1),
                                         "-p", str(PORT), "-n", str(size), "-R", "-J"])
        out = _iperf_json(cli, deadline)
        _iperf_json(srv, deadline)
    end = out.get("end", {})
    recv, sent = end.get("sum_received", {}), end.get("sum_sent", {})
    got = int(recv.get("bytes", 0))
    if got < size:
        raise CellFailed(f"iperf3 received {got} of {size} bytes")
    return {"bytes": got, "time_s": float(recv.get("seconds", 0.0)),
            "retrans": sent.get("retransmits"), "iperf_bps": recv.get("bits_per_second")}


def _iperf_json(proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CellFailed("timeout: iperf3 still running at the cell's deadline") from None
    try:
        data: dict[str, Any] = json.loads(out)
    except ValueError:
        raise CellFailed(f"iperf3 output is not JSON: {_tail(out or err)}") from None
    if data.get("error"):
        raise CellFailed(f"iperf3: {data['error']}")
    return data


RUNNERS = {"file": run_file, "video": run_video, "iperf3": run_iperf3}


def run_workload(cell: Cell, setup: Any, deadline: float, n_paths: int) -> dict[str, Any]:
    return RUNNERS[cell.workload.kind](cell, setup, deadline, n_paths)
