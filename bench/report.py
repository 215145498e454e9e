"""Turns a results document into report.md, results.csv, results.json and plots,
and compares two results.json files.

Ratios are the point: an absolute microsecond from this VM means little on
another machine, but "1.3x raw Python, same transport, same placement, taken
seconds apart" travels. Every ipcgw row is divided by the raw-Python and C
rows of its own transport, size and placement; peers are divided by the raw
row of the mechanism they ride on (ZeroMQ ipc and multiprocessing.Pipe on
unix sockets, ZeroMQ tcp on TCP).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.gateway import SYSCALL_TRANSPORTS
from bench.hist import Histogram
from bench.idle import IDLE_TARGET_PCT
from bench.measure import CSV_COLUMNS, Record

__all__ = ["compare", "load", "rows_with_ratios", "shm_targets", "write_report"]

#: Which raw/C transport a peer is measured against.
PEER_BASE = {"zmq-ipc": "unix", "zmq-tcp": "tcp", "mp-pipe": "unix"}
DEFAULT_FRAMING = "length:4"
HIGH_LOAD = 0.5  # 1-min load per CPU above which figures are flagged as disturbed

TARGETS_TEXT = [
    ("p50 64 B vs raw", "<= 1.5x raw Python round trip, same transport and placement"),
    ("MB/s 64 KiB vs raw", ">= 0.8x raw Python throughput"),
    ("MB/s 1 MiB vs raw", ">= 0.8x raw Python throughput"),
    ("p50 64 B vs C", "<= 1.2x C floor cross-CPU, <= 2.5x same-CPU"),
    ("MB/s 1 MiB vs C", ">= 0.5x C floor throughput"),
]

#: The shm issue's targets compare shm with the transports that cost a syscall per message.
SHM_P50_FACTOR = 5.0  # shm's 64 B p50 at least 5x lower than the best syscall transport's
SHM_TP_FACTOR = 1.0  # shm's 1 MiB MB/s at least the best syscall transport's
SHM_FRAMING, SHM_PLACEMENT = "length:4", "cross"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1024 else f"{n} B"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or a != a or b != b:
        return None
    return round(a / b, 3)


def rows_with_ratios(records: Iterable[Record | dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (Record.row()) plus p50/throughput ratios to raw Python and to C."""
    rows = [r.row() if isinstance(r, Record) else dict(r) for r in records]
    index = {(r["kind"], r["transport"], r["placement"], r["size"]): r for r in rows
             if r["kind"] in ("raw", "c")}
    for r in rows:
        base = PEER_BASE.get(r["transport"], r["transport"])
        raw = index.get(("raw", base, r["placement"], r["size"])) if r["kind"] != "raw" else None
        c = index.get(("c", base, r["placement"], r["size"])) if r["kind"] != "c" else None
        r["p50_vs_raw"] = _ratio(r["lat_p50_us"], raw and raw["lat_p50_us"])
        r["tp_vs_raw"] = _ratio(r["mb_per_s"], raw and raw["mb_per_s"])
        r["p50_vs_c"] = _ratio(r["lat_p50_us"], c and c["lat_p50_us"])
        r["tp_vs_c"] = _ratio(r["mb_per_s"], c and c["mb_per_s"])
    return rows


# ---------------------------------------------------------------- files


def write_report(doc: dict[str, Any], out: Path) -> list[Path]:
    """Write every file; returns their paths. Plots are skipped with a note without matplotlib."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[Record] = doc["records"]
    rows = rows_with_ratios(records)
    hists = {r.key: r.hist for r in records if r.hist is not None and r.hist.total}
    notes = list(doc.get("notes", []))
    written: list[Path] = []

    json_doc = {k: v for k, v in doc.items() if k != "records"}
    json_doc["results"] = []
    for rec, row in zip(records, rows, strict=True):
        item = dict(row)
        item["hist"] = rec.hist.to_dict() if rec.hist is not None and rec.hist.total else None
        json_doc["results"].append(item)
    plots, plot_note = _plots(rows, hists, doc, out)
    if plot_note:
        notes.append(plot_note)
    json_doc["notes"] = notes
    json_doc["shm_targets"] = shm = shm_targets(rows, doc["config"], doc.get("shm_idle"),
                                                doc.get("shm_interleaved"))
    path = out / "results.json"
    path.write_text(json.dumps(json_doc, indent=1) + "\n")
    written.append(path)

    path = out / "results.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    written.append(path)

    path = out / "report.md"
    path.write_text(_markdown(doc, rows, notes, plots, shm))
    written.append(path)
    return written + plots


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------- markdown


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100_000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out) + "\n"


def _load_line(machine: dict[str, Any]) -> tuple[str, bool]:
    start, end = machine.get("loadavg_start") or [], machine.get("loadavg_end") or []
    cores = machine.get("cores") or 1
    high = any(load[0] / cores > HIGH_LOAD for load in (start, end) if load)
    text = (f"load average (1/5/15 min) at start {' '.join(map(str, start)) or '?'}, "
            f"at end {' '.join(map(str, end)) or '?'}")
    return text, high


def _markdown(doc: dict[str, Any], rows: list[dict[str, Any]], notes: list[str],
              plots: list[Path], shm: dict[str, Any]) -> str:
    m, cfg = doc["machine"], doc["config"]
    load_text, high = _load_line(m)
    md = ["# ipcgw benchmark report\n"]
    md.append(f"{m.get('date')} · {m.get('cpu_model')} · {m.get('cores')} CPUs · "
              f"Linux {m.get('kernel')} · Python {m.get('python')} · "
              f"ipcgw {m.get('ipcgw_commit') or '?'} · run took {doc.get('duration_s')} s"
              f"{' · **quick run**' if cfg.get('quick') else ''}\n")
    md.append(f"- {load_text}" + (" — **the machine was busy: absolute figures are "
                                  "disturbed; ratios, taken seconds apart, less so**" if high
                                  else "") + "\n")
    loads = sorted(r["load1"] for r in rows if r.get("load1") is not None)
    if loads:
        md.append(f"- 1-min load when each case started: min {loads[0]}, median "
                  f"{loads[len(loads) // 2]}, max {loads[-1]} (column `load1` in results.csv)\n")
    limits = m.get("ipc_limits", {})
    md.append("- IPC limits: " + ", ".join(f"{k} {v}" for k, v in limits.items()) + "\n")
    pc = cfg.get("placement_cpus", {})
    md.append("- placement: " + "; ".join(
        f"`{p}` = server on CPU {c['server']}, client on CPU {c['client']}" for p, c in pc.items())
        + f"; {cfg.get('lat_time_s')} s of round trips and {cfg.get('tp_time_s')} s of one-way "
        "sending per case, after a warm-up\n")
    md.append("- latency: round trip in µs (ipcgw: `Client.ping` → Pong through `ipcgw serve`; "
              "references: the payload echoed back by a child process), from a log-bucketed "
              "histogram (< 0.4 % bucket error). Throughput: one-way payload bytes, 1 MB = 10^6 B "
              "(ipcgw: `Client.send(Report)` then one ping to mark completion). CPU: µs per "
              "round trip / per message on each side (client `getrusage`, server "
              "`/proc/PID/task/*/schedstat`).\n")
    md.append("- xraw / xC: the row's p50 (lower is better) and MB/s (higher is better) divided "
              "by the raw-Python and C rows of the same transport, size and placement; peers are "
              "divided by the rows of the mechanism they ride on (zmq-ipc and mp-pipe: unix, "
              "zmq-tcp: tcp).\n")
    if notes:
        md.append("\n**Notes**\n\n" + "".join(f"- {n}\n" for n in notes))

    md.append("\n## Summary: who wins at each size\n\n")
    md.append(_summary(rows, cfg))
    md.append("\n## Targets\n\n")
    md.append(_targets(rows, cfg))
    md.append("\n## shm targets\n\n")
    md.append(_shm_section(shm, rows, cfg))
    md.append("\n## Results per payload size\n")
    for size in cfg["sizes"]:
        md.append(f"\n### {_size(size)}\n\n")
        md.append(_size_table([r for r in rows if r["size"] == size]))
    micro = doc.get("micro") or []
    if micro:
        md.append("\n## Framing and codec micro-bench (no transport)\n\n")
        md.append(_micro_table(micro))
    if plots:
        md.append("\n## Plots\n\n" + "".join(f"![{p.stem}]({p.name})\n\n" for p in plots))
    return "".join(md)


_KIND_ORDER = {"ipcgw": 0, "raw": 1, "c": 2, "peer": 3}


def _size_table(rows: list[dict[str, Any]]) -> str:
    rows = sorted(rows, key=lambda r: (r["placement"] != "same", _KIND_ORDER[r["kind"]],
                                       r["transport"], r["framing"]))
    header = ["placement", "kind", "transport", "framing", "p50 µs", "p99 µs", "msgs/s", "MB/s",
              "CPU µs/rtt cli/srv", "CPU µs/msg cli/srv", "p50 xraw", "MB/s xraw", "p50 xC",
              "MB/s xC"]
    lines = []
    for r in rows:
        if r["note"].startswith("error"):
            lines.append([r["placement"], r["kind"], r["transport"], r["framing"] or "-",
                          r["note"].replace("|", "/")[:120], *["-"] * 9])
            continue
        lines.append([
            r["placement"], r["kind"], r["transport"], r["framing"] or "-",
            _f(r["lat_p50_us"]), _f(r["lat_p99_us"]), _f(r["msgs_per_s"], 0), _f(r["mb_per_s"]),
            f"{_f(r['cpu_client_us_per_rtt'])} / {_f(r['cpu_server_us_per_rtt'])}",
            f"{_f(r['cpu_client_us_per_msg'])} / {_f(r['cpu_server_us_per_msg'])}",
            _x(r["p50_vs_raw"]), _x(r["tp_vs_raw"]), _x(r["p50_vs_c"]), _x(r["tp_vs_c"]),
        ])
    return _table(header, lines)


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r["note"].startswith("error")]


def _summary(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    lines = []
    for size in cfg["sizes"]:
        for placement in cfg["placements"]:
            sel = [r for r in _ok(rows) if r["size"] == size and r["placement"] == placement]
            gw = [r for r in sel if r["kind"] == "ipcgw"]
            peers = [r for r in sel if r["kind"] == "peer"]
            if not gw:
                continue

            def name(r: dict[str, Any]) -> str:
                return f"{r['transport']} ({r['framing']})" if r["framing"] else r["transport"]

            by_lat = sorted((r for r in gw if r["lat_p50_us"]), key=lambda r: r["lat_p50_us"])
            by_tp = sorted((r for r in gw if r["mb_per_s"]), key=lambda r: -r["mb_per_s"])
            lat = tp = vs_peer = "-"
            if by_lat:
                lat = f"{name(by_lat[0])} {by_lat[0]['lat_p50_us']:.1f} µs"
                if len(by_lat) > 1:
                    lat += (f", {by_lat[1]['lat_p50_us'] / by_lat[0]['lat_p50_us']:.2f}x ahead of "
                            f"{name(by_lat[1])}")
            if by_tp:
                tp = f"{name(by_tp[0])} {by_tp[0]['mb_per_s']:.1f} MB/s"
                if len(by_tp) > 1:
                    tp += (f", {by_tp[0]['mb_per_s'] / by_tp[1]['mb_per_s']:.2f}x "
                           f"{name(by_tp[1])}")
            best_peer = min((r for r in peers if r["lat_p50_us"]), key=lambda r: r["lat_p50_us"],
                            default=None)
            if best_peer and by_lat:
                q = best_peer["lat_p50_us"] / by_lat[0]["lat_p50_us"]
                zmq = [r for r in peers if r["transport"].startswith("zmq") and r["lat_p50_us"]]
                vs_peer = (f"best peer {best_peer['transport']} {best_peer['lat_p50_us']:.1f} µs "
                           f"({q:.2f}x ipcgw's best)")
                if zmq:
                    z = min(zmq, key=lambda r: r["lat_p50_us"])
                    zq = z["lat_p50_us"] / by_lat[0]["lat_p50_us"]
                    vs_peer += f"; ZeroMQ best {z['transport']} {zq:.2f}x"
            lines.append([_size(size), placement, lat, tp, vs_peer])
    return _table(["size", "placement", "lowest p50 (ipcgw)", "highest MB/s (ipcgw)",
                   "vs peers (p50)"], lines)


def _targets(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    framing = DEFAULT_FRAMING if DEFAULT_FRAMING in cfg["framings"] else cfg["framings"][0]
    gw = {(r["transport"], r["placement"], r["size"]): r for r in _ok(rows)
          if r["kind"] == "ipcgw" and r["framing"] == framing}
    header = ["transport", "placement", "p50 64 B xraw (≤1.5)", "MB/s 64 KiB xraw (≥0.8)",
              "MB/s 1 MiB xraw (≥0.8)", "p50 64 B xC (≤1.2 cross, ≤2.5 same)",
              "MB/s 1 MiB xC (≥0.5)"]
    lines = []
    met = missed = 0

    def cell(v: float | None, ok: bool) -> str:
        nonlocal met, missed
        if v is None:
            return "-"
        if ok:
            met += 1
        else:
            missed += 1
        return f"{v:.2f}x {'✓' if ok else '✗'}"

    for transport in cfg["transports"]:
        for placement in cfg["placements"]:
            small = gw.get((transport, placement, 64))
            mid = gw.get((transport, placement, 64 * 1024))
            big = gw.get((transport, placement, 1024 * 1024))
            if not (small or mid or big):
                continue
            c_limit = 1.2 if placement == "cross" else 2.5
            p50_raw = small and small["p50_vs_raw"]
            tp_mid = mid and mid["tp_vs_raw"]
            tp_big = big and big["tp_vs_raw"]
            p50_c = small and small["p50_vs_c"]
            tp_c = big and big["tp_vs_c"]
            lines.append([
                transport, placement,
                cell(p50_raw, p50_raw is not None and p50_raw <= 1.5),
                cell(tp_mid, tp_mid is not None and tp_mid >= 0.8),
                cell(tp_big, tp_big is not None and tp_big >= 0.8),
                cell(p50_c, p50_c is not None and p50_c <= c_limit),
                cell(tp_c, tp_c is not None and tp_c >= 0.5),
            ])
    text = f"ipcgw with framing `{framing}`; {met} targets met, {missed} missed.\n\n"
    return text + _table(header, lines)


# ---------------------------------------------------------------- shm targets


def shm_targets(rows: list[dict[str, Any]], cfg: dict[str, Any], idle: dict[str, Any] | None,
                interleaved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shm issue's three targets, each from this run's own figures: the 64 B p50
    and the 1 MiB throughput of ipcgw over shm against the best syscall transport
    (ipcgw rows, `length:4`, `cross`), and the idle CPU of a connected shm client.
    The p50 target is judged on the interleaved rounds when they ran (the per-case
    table's ratio is kept beside it as ``p50_64B_sequential``). A target whose
    inputs did not run has ``met: None`` and a ``missing`` reason."""
    sequential = _vs_syscall(rows, cfg, 64, "lat_p50_us", SHM_P50_FACTOR)
    return {
        "framing": SHM_FRAMING, "placement": SHM_PLACEMENT,
        "p50_64B": _interleaved_target(interleaved) or sequential,
        "p50_64B_sequential": sequential,
        "mb_per_s_1MiB": _vs_syscall(rows, cfg, 1 << 20, "mb_per_s", SHM_TP_FACTOR),
        "idle_cpu": _idle_target(idle),
    }


def _interleaved_target(ab: dict[str, Any] | None) -> dict[str, Any] | None:
    """The p50 target from interleaved rounds: the median of per-round ratios."""
    if not ab or "error" in ab:
        return None
    median = ab["median_p50_us"]
    best = min((t for t in median if t != "shm"), key=lambda t: median[t])
    return {"size": ab["size"], "metric": "lat_p50_us", "goal_ratio": SHM_P50_FACTOR,
            "shm": median["shm"], "best": best, "best_value": median[best],
            "ratio": ab["ratio"], "met": ab["ratio"] >= SHM_P50_FACTOR,
            "compared": sorted(t for t in median if t != "shm"),
            "not_run": [t for t in SYSCALL_TRANSPORTS if t not in median],
            "interleaved": {k: ab[k] for k in ("rounds", "slice_s", "ratios")}}


def _not_configured(cfg: dict[str, Any], size: int) -> str:
    for what, wanted, ran in (("framing", SHM_FRAMING, cfg["framings"]),
                              ("placement", SHM_PLACEMENT, cfg["placements"]),
                              ("size", size, cfg["sizes"]), ("transport", "shm", cfg["transports"])):
        if wanted not in ran:
            shown = _size(wanted) if what == "size" else wanted
            return f"{what} {shown} was not in this run"
    return ""


def _vs_syscall(rows: list[dict[str, Any]], cfg: dict[str, Any], size: int, key: str,
                factor: float) -> dict[str, Any]:
    """shm against the best syscall transport on ``key``; for p50 (lower is better)
    the ratio is best/shm, for MB/s shm/best, so the goal is always ratio >= factor."""
    lower = key == "lat_p50_us"
    out: dict[str, Any] = {"size": size, "metric": key, "goal_ratio": factor, "met": None}
    sel = {r["transport"]: r for r in rows if r["kind"] == "ipcgw" and r["size"] == size
           and r["framing"] == SHM_FRAMING and r["placement"] == SHM_PLACEMENT}
    shm = sel.get("shm")
    syscall = {t: r for t, r in sel.items() if t in SYSCALL_TRANSPORTS
               and not r["note"].startswith("error") and r[key]}
    out["compared"] = sorted(syscall)
    out["not_run"] = [t for t in SYSCALL_TRANSPORTS if t not in syscall]
    where = f"{_size(size)}, {SHM_PLACEMENT}, {SHM_FRAMING}"
    if reason := _not_configured(cfg, size):
        out["missing"] = reason
    elif shm is None or shm["note"].startswith("error") or not shm[key]:
        out["missing"] = f"shm did not run at {where}" + (f" ({shm['note']})" if shm else "")
    elif not syscall:
        out["missing"] = (f"no syscall transport ({', '.join(SYSCALL_TRANSPORTS)}) ran at "
                          f"{where}")
    if "missing" in out:
        return out
    pick = min if lower else max
    best = pick(syscall, key=lambda t: syscall[t][key])
    ratio = syscall[best][key] / shm[key] if lower else shm[key] / syscall[best][key]
    out.update(shm=shm[key], best=best, best_value=syscall[best][key], ratio=round(ratio, 3),
               met=ratio >= factor)
    return out


def _idle_target(idle: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"goal_percent": IDLE_TARGET_PCT, "met": None}
    if not idle:
        out["missing"] = "not measured (shm was not in this run, or --idle-time 0)"
    elif "error" in idle:
        out["missing"] = f"not measured: {idle['error']}"
    else:
        out.update(percent=idle["cpu_percent"], seconds=idle["seconds"],
                   server_cpu_s=idle["server_cpu_s"], client_cpu_s=idle["client_cpu_s"],
                   resolution_percent=idle["resolution_percent"],
                   met=idle["cpu_percent"] < IDLE_TARGET_PCT)
    return out


def _mark(t: dict[str, Any], value: str) -> str:
    if t["met"] is None:
        return f"not measured: {t['missing']}".replace("|", "/")
    return f"{value} {'✓' if t['met'] else '✗'}"


def _shm_section(shm: dict[str, Any], rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    p50, tp, idle = shm["p50_64B"], shm["mb_per_s_1MiB"], shm["idle_cpu"]
    targets = (p50, tp, idle)
    met = sum(t["met"] is True for t in targets)
    missed = sum(t["met"] is False for t in targets)
    text = (f"The targets of the shm issue, each from this run: ipcgw rows, framing "
            f"`{SHM_FRAMING}`, `{SHM_PLACEMENT}` placement; {met} met, {missed} missed, "
            f"{3 - met - missed} not measured.\n\n")

    def best(t: dict[str, Any], unit: str) -> str:
        return "-" if t["met"] is None else f"{t['best']} {_f(t['best_value'])} {unit}"

    lines = [
        ["p50 round trip, 64 B", f"≥ {SHM_P50_FACTOR:g}x lower than the best syscall transport",
         "-" if p50["met"] is None else f"{_f(p50['shm'])} µs", best(p50, "µs"),
         _mark(p50, "-" if p50["met"] is None else _x(p50["ratio"]))],
        ["one-way MB/s, 1 MiB", f"≥ {SHM_TP_FACTOR:g}x the best syscall transport",
         "-" if tp["met"] is None else f"{_f(tp['shm'])} MB/s", best(tp, "MB/s"),
         _mark(tp, "-" if tp["met"] is None else _x(tp["ratio"]))],
        ["idle CPU, one connected silent client", f"< {IDLE_TARGET_PCT:g} % of one CPU "
         "(server + client)", "-" if idle["met"] is None else
         f"{idle['percent']:.2f} % over {idle['seconds']:.1f} s", "-",
         _mark(idle, "-" if idle["met"] is None else f"{idle['percent']:.2f} %")],
    ]
    text += _table(["target", "goal", "shm", "best syscall transport", "result"], lines)
    return text + _shm_notes(shm, rows)


def _shm_notes(shm: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Which syscall transports were compared, the idle figure's parts, and the shm
    mechanism's own floor (raw Python, C) for scale."""
    notes = []
    p50, seq = shm["p50_64B"], shm.get("p50_64B_sequential")
    if "interleaved" in p50:
        ab = p50["interleaved"]
        notes.append(
            f"p50: {ab['rounds']} interleaved rounds of {ab['slice_s']:g} s per transport, "
            f"ratio = median of the per-round ratios ({', '.join(_x(r) for r in ab['ratios'])}); "
            "the CPU's speed drifts in phases here, which a ratio of two cases taken a minute "
            "apart would measure too (bench/interleave.py)")
        if seq and seq["met"] is not None:
            notes.append(f"p50 from the per-case table (sequential): shm {_f(seq['shm'])} µs, "
                         f"{seq['best']} {_f(seq['best_value'])} µs, {_x(seq['ratio'])}")
    for t in (shm["p50_64B"], shm["mb_per_s_1MiB"]):
        if t["met"] is not None and t["not_run"]:
            notes.append(f"{_size(t['size'])}: best of {', '.join(t['compared'])}; "
                         f"{', '.join(t['not_run'])} did not run")
    idle = shm["idle_cpu"]
    if idle["met"] is not None:
        notes.append(f"idle: `ipcgw serve` {idle['server_cpu_s']:.2f} s + client "
                     f"{idle['client_cpu_s']:.2f} s of CPU (`/proc/PID/stat` utime+stime) over "
                     f"{idle['seconds']:.1f} s; one clock tick is {idle['resolution_percent']:.2f} %")
    ref = {(r["kind"], r["size"]): r for r in _ok(rows) if r["kind"] in ("raw", "c")
           and r["transport"] == "shm" and r["placement"] == SHM_PLACEMENT}
    scale = [f"{kind} {_size(size)} {_f(r[key])} {unit}" for kind in ("raw", "c")
             for size, key, unit in ((64, "lat_p50_us", "µs p50"), (1 << 20, "mb_per_s", "MB/s"))
             if (r := ref.get((kind, size))) and r[key]]
    if scale:
        notes.append("the same rings without ipcgw (cross): " + ", ".join(scale))
    return "\n" + "".join(f"- {n}\n" for n in notes) if notes else ""


def _micro_table(micro: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for m in micro:
        if m["name"] not in names:
            names.append(m["name"])
    lines = []
    for name in names:
        items = {(m["op"], m["size"]): m for m in micro if m["name"] == name}
        sizes = sorted({s for _, s in items})
        small, big = sizes[0], sizes[-1]

        def get(op: str, size: int, key: str, items: dict[Any, Any] = items) -> str:
            m = items.get((op, size))
            return "-" if m is None else _f(m[key], 0 if key == "per_s" else 1)

        lines.append([
            name, _size(small), get("encode", small, "per_s"), get("decode", small, "per_s"),
            _size(big) if big != small else "-",
            get("encode", big, "mb_per_s") if big != small else "-",
            get("decode", big, "mb_per_s") if big != small else "-",
        ])
    note = ("Frames (or messages) per second for a small payload, MB/s of payload for a large "
            "one; decoders are fed a ~1 MiB stream in 64 KiB reads.\n\n")
    return note + _table(["framing / codec", "small", "encode /s", "decode /s", "large",
                          "encode MB/s", "decode MB/s"], lines)


# ---------------------------------------------------------------- plots


_COLORS = {"fifo": "tab:blue", "sysv": "tab:orange", "posixmq": "tab:green", "tcp": "tab:red",
           "unix": "tab:purple", "shm": "tab:brown", "zmq-ipc": "tab:gray", "zmq-tcp": "black",
           "mp-pipe": "tab:olive"}
_STYLES = {"ipcgw": "-", "raw": "--", "c": ":", "peer": "-."}


def _plots(rows: list[dict[str, Any]], hists: dict[tuple[str, str, str, str, int], Histogram],
           doc: dict[str, Any], out: Path) -> tuple[list[Path], str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib not installed (pip install 'ipcgw[plot]')"
    cfg = doc["config"]
    framing = DEFAULT_FRAMING if DEFAULT_FRAMING in cfg["framings"] else cfg["framings"][0]
    placements = cfg["placements"]
    paths = []

    def wanted(kind: str, fr: str) -> bool:
        return (kind == "ipcgw" and fr == framing) or kind in ("raw", "peer")

    if 64 in cfg["sizes"] and placements:
        fig, axes = plt.subplots(1, len(placements), figsize=(6.5 * len(placements), 4.8),
                                 squeeze=False, sharey=True)
        for ax, placement in zip(axes[0], placements, strict=True):
            for (kind, transport, fr, pl, size), hist in sorted(hists.items()):
                if size != 64 or pl != placement or not wanted(kind, fr):
                    continue
                xs, ys = zip(*hist.cdf(), strict=True)
                ax.step([x / 1000 for x in xs], ys, where="post", linestyle=_STYLES[kind],
                        color=_COLORS.get(transport, "tab:cyan"), linewidth=1.4,
                        label=f"{kind} {transport}")
            ax.set_xscale("log")
            ax.set_xlabel("round trip, µs (log)")
            ax.set_title(f"64 B round trip CDF — {placement} CPU")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("fraction of round trips ≤ x")
        axes[0][-1].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"ipcgw ({framing}, solid) vs raw Python (dashed) and peers (dash-dot)")
        fig.tight_layout()
        path = out / "latency_cdf_64B.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    if len(cfg["sizes"]) > 1 and placements:
        fig, axes = plt.subplots(1, len(placements), figsize=(6.5 * len(placements), 4.8),
                                 squeeze=False, sharey=True)
        for ax, placement in zip(axes[0], placements, strict=True):
            series: dict[tuple[str, str], list[tuple[int, float]]] = {}
            for r in _ok(rows):
                if r["placement"] != placement or not r["mb_per_s"]:
                    continue
                if not (wanted(r["kind"], r["framing"]) or r["kind"] == "c"):
                    continue
                series.setdefault((r["kind"], r["transport"]), []).append(
                    (r["size"], r["mb_per_s"]))
            for (kind, transport), pts in sorted(series.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                        linestyle=_STYLES[kind], color=_COLORS.get(transport, "tab:cyan"),
                        linewidth=1.3, label=f"{kind} {transport}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("payload bytes (log)")
            ax.set_title(f"one-way throughput — {placement} CPU")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("MB/s (log)")
        axes[0][-1].legend(fontsize=6, loc="lower right", ncol=2)
        fig.suptitle(f"ipcgw ({framing}, solid), raw Python (dashed), C (dotted), peers (dash-dot)")
        fig.tight_layout()
        path = out / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths, ""


# ---------------------------------------------------------------- compare


def compare(old: dict[str, Any], new: dict[str, Any], threshold: float = 0.10) -> list[str]:
    """Lines comparing two results.json documents: new/old ratios per matching case.

    p50 and p99 ratios > 1 mean slower, MB/s ratios < 1 mean slower; a change
    beyond ``threshold`` is flagged. Cases present in one run only are listed.
    """
    def key(r: dict[str, Any]) -> tuple[str, str, str, str, int]:
        return (r["kind"], r["transport"], r["framing"], r["placement"], r["size"])

    a = {key(r): r for r in old.get("results", [])}
    b = {key(r): r for r in new.get("results", [])}
    lines = [f"old: {old.get('machine', {}).get('date')} ({old.get('machine', {}).get('ipcgw_commit')})"
             f"  new: {new.get('machine', {}).get('date')} ({new.get('machine', {}).get('ipcgw_commit')})",
             f"{'case':52} {'p50 new/old':>12} {'p99 new/old':>12} {'MB/s new/old':>13}"]
    logs: dict[str, list[float]] = {"p50": [], "mb": []}
    worse = better = 0
    for k in sorted(set(a) & set(b), key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
        ra, rb = a[k], b[k]
        p50 = _ratio(rb.get("lat_p50_us"), ra.get("lat_p50_us"))
        p99 = _ratio(rb.get("lat_p99_us"), ra.get("lat_p99_us"))
        mb = _ratio(rb.get("mb_per_s"), ra.get("mb_per_s"))
        flag = ""
        if (p50 and p50 > 1 + threshold) or (mb and mb < 1 - threshold):
            flag, worse = "  slower", worse + 1
        elif (p50 and p50 < 1 - threshold) or (mb and mb > 1 + threshold):
            flag, better = "  faster", better + 1
        for name, v in (("p50", p50), ("mb", mb)):
            if v:
                logs[name].append(math.log(v))
        kind, transport, framing, placement, size = k
        label = f"{kind} {transport} {framing or '-'} {placement} {_size(size)}"
        lines.append(f"{label:52} {_x(p50):>12} {_x(p99):>12} {_x(mb):>13}{flag}")
    for k in sorted(set(a) ^ set(b)):
        lines.append(f"{' '.join(map(str, k))}: only in the {'old' if k in a else 'new'} run")
    gm = {n: math.exp(sum(v) / len(v)) if v else None for n, v in logs.items()}
    lines.append(f"geometric mean: p50 {_x(gm['p50'])}, MB/s {_x(gm['mb'])}; "
                 f"{worse} cases slower and {better} faster by more than {threshold:.0%}")
    return lines
