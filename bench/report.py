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
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .hist import Histogram
from .idle import IDLE_TARGET_PCT
from .measure import CSV_COLUMNS, Record
from .servers import SYSCALL_TRANSPORTS

__all__ = ["SERIES", "compare", "load", "rows_with_ratios", "shm_targets", "summary_series",
           "write_report"]

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


def _ref_p50(row: dict[str, Any]) -> float | None:
    """A reference's round trip: across CPUs the C floor (cfloor.py says why), else p50."""
    p50: float | None = row.get("lat_floor_us") or row["lat_p50_us"]
    return p50


def _per_round(a: dict[str, Any], b: dict[str, Any] | None, key: str,
               ref_key: str) -> list[float]:
    """Ratios a/b round by round (both sides' ``round_values``), where both ran."""
    ra, rb = a.get("round_values") or [], (b or {}).get("round_values") or []
    out = []
    for x, y in zip(ra, rb, strict=False):
        if not x or not y:
            continue
        num, den = x.get(key), y.get(ref_key) or y.get(key)
        if num and den:
            out.append(num / den)
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values)


def rows_with_ratios(records: Iterable[Record | dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (Record.row()) plus p50/throughput ratios to raw Python and to C.

    With interleaved rounds a ratio is the median of the per-round ratios and
    ``<ratio>_spread`` their [min, max]; without, the ratio of the merged figures.
    Across CPUs the C side of a p50 ratio is the C floor when it was searched."""
    rows = []
    for r in records:
        if isinstance(r, Record):
            row = r.row()
            row["round_values"] = r.extra.get("rounds")
        else:
            row = dict(r)
        rows.append(row)
    index = {(r["kind"], r["transport"], r["placement"], r["size"]): r for r in rows
             if r["kind"] in ("raw", "c")}
    for r in rows:
        base = PEER_BASE.get(r["transport"], r["transport"])
        raw = index.get(("raw", base, r["placement"], r["size"])) if r["kind"] != "raw" else None
        c = index.get(("c", base, r["placement"], r["size"])) if r["kind"] != "c" else None
        # (ratio, reference row, key, reference's round key, row key, reference's value)
        pairs: tuple[tuple[str, dict[str, Any] | None, str, str, str, float | None], ...] = (
            ("p50_vs_raw", raw, "p50_us", "p50_us", "lat_p50_us", raw["lat_p50_us"] if raw else None),
            ("tp_vs_raw", raw, "mb_per_s", "mb_per_s", "mb_per_s", raw["mb_per_s"] if raw else None),
            ("p50_vs_c", c, "p50_us", "floor_us", "lat_p50_us", _ref_p50(c) if c else None),
            ("tp_vs_c", c, "mb_per_s", "mb_per_s", "mb_per_s", c["mb_per_s"] if c else None))
        for name, ref, key, ref_key, row_key, ref_value in pairs:
            rounds = _per_round(r, ref, key, ref_key) if ref else []
            if rounds:
                r[name] = round(_median(rounds), 3)
                r[f"{name}_spread"] = [round(min(rounds), 3), round(max(rounds), 3)]
                r[f"{name}_rounds"] = len(rounds)
            else:
                r[name] = _ratio(r[row_key], ref_value)
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
                                                doc.get("shm_interleaved"),
                                                doc.get("shm_interleaved_same"))
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
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    return doc


# ---------------------------------------------------------------- markdown
#
# One number format throughout: µs with one decimal below 100 and integers
# above, MB/s and messages/s as integers, ratios with two decimals and x.


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100_000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _us(v: float | None) -> str:
    """Microseconds: 1 decimal below 100, integers above."""
    if v is None or v != v:
        return "-"
    return f"{v:.1f}" if abs(v) < 100 else f"{v:,.0f}"


def _int(v: float | None) -> str:
    """MB/s, messages/s: integers with thousands separators."""
    return "-" if v is None or v != v else f"{v:,.0f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _xr(v: float | None) -> str:
    """A ratio in the report: 2 decimals and x."""
    return "-" if v is None else f"{v:.2f}\u00d7"


def _xs(row: dict[str, Any], name: str) -> str:
    """A ratio and, from interleaved rounds, its spread: ``1.43x (1.31-1.52)``."""
    v, spread = row.get(name), row.get(f"{name}_spread")
    if v is None:
        return "-"
    if spread and row.get(f"{name}_rounds", 0) > 1:
        return f"{_xr(v)} ({spread[0]:.2f}\u2013{spread[1]:.2f})"
    return _xr(v)


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


def _others_line(machine: dict[str, Any]) -> str:
    """How much CPU other people's processes took during the run (runner measures it)."""
    others = machine.get("others_cpu")
    if not others:
        return ""
    pct = others["percent_of_machine"]
    verdict = ("**the machine was shared: other processes used CPU while the bench ran, so "
               "absolute figures are disturbed; the ratios come from interleaved rounds, "
               "which such load hits on both sides alike**" if pct >= 5 else
               "the machine was otherwise quiet")
    return (f"- other processes (not the bench's) used {others['cpu_s']:.0f} CPU-seconds, "
            f"{pct:.0f} % of the machine's {others['cores']} CPUs over the run "
            f"(`/proc/stat` busy time minus the bench's own, children included) — {verdict}\n")


_FIGURE = "summary.png"


def _markdown(doc: dict[str, Any], rows: list[dict[str, Any]], notes: list[str],
              plots: list[Path], shm: dict[str, Any]) -> str:
    m, cfg = doc["machine"], doc["config"]
    load_text, high = _load_line(m)
    rounds = cfg.get("rounds") or 1
    md = ["# ipcgw benchmark report\n\n"]
    md.append(f"{m.get('date')} · {m.get('cpu_model')} · {m.get('cores')} CPUs · "
              f"Linux {m.get('kernel')} · Python {m.get('python')} · "
              f"ipcgw {m.get('ipcgw_commit') or '?'} · run took {doc.get('duration_s')} s"
              f"{' · **quick run**' if cfg.get('quick') else ''}\n\n")
    if any(p.name == _FIGURE for p in plots):
        md.append(f"![Round trip p50 with p99 whiskers per transport, same CPU and across "
                  f"CPUs]({_FIGURE})\n\n")
        md.append(
            "**The figure**: the round trip of one message and its answer, per transport "
            "(columns) and CPU placement (rows), at each payload size; the marker is the "
            "median (p50), the whisker reaches the 99th percentile (p99); log scale. "
            f"**ipcgw** (blue circles: `Client.ping` through `ipcgw serve`, framing "
            f"`{_framing(cfg)}`) against the same transport without ipcgw: **raw Python** "
            "(orange squares: the same syscalls, no framing or codec) and **C** (green "
            "triangles). Across CPUs the hollow green diamond is the **C floor** (the best "
            "p50 of the C echo with 0\u201320 µs of added work, the work taken back out: on "
            "this VM an echo that never idles answers sooner, so the plain C echo is not a "
            "floor). Lower is better.\n\n")
    md.append("## Conditions\n\n")
    md.append(f"- {load_text}" + (" — **the machine was busy**" if high else "") + "\n")
    md.append(_others_line(m))
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
        f"sending per case, after a warm-up, split into {rounds} interleaved rounds\n")
    md.append(f"- rounds: all cases of one payload size and placement (every transport, ipcgw, "
              f"raw Python, C, peers) run in {rounds} rounds, each case 1/{rounds} of its time "
              "per round, the order rotating; this VM's CPU speed drifts in phases of seconds "
              "to minutes, so every ratio is the **median of its per-round ratios** (figures "
              "taken seconds apart), with their min\u2013max in brackets; p50/p99/MB/s in the "
              "tables are of all rounds together\n")
    md.append("- latency: round trip in µs (ipcgw: `Client.ping` → Pong through `ipcgw serve`; "
              "references: the payload echoed back by a child process), from a log-bucketed "
              "histogram (< 0.4 % bucket error). Throughput: one-way payload bytes, 1 MB = 10^6 B "
              "(ipcgw: `Client.send` of a sink `Command` then one ping to mark completion). CPU: "
              "µs per round trip / per message on each side (client `getrusage`, server "
              "`/proc/PID/task/*/schedstat`).\n")
    work = ", ".join(map(str, cfg.get("work_us") or []))
    md.append(f"- C floor across CPUs: the C echo also ran with {work} µs "
              "of busy work before each reply; the floor is the smallest p50 \u2212 work "
              "(`bench/cfloor.py`), and the p50 ratios to C across CPUs use it\n")
    if notes:
        md.append("\n**Notes**\n\n" + "".join(f"- {n}\n" for n in notes))

    md.append("\n## Targets\n\n")
    md.append(_targets(rows, cfg))
    misses = _misses(rows, cfg, doc.get("micro") or [])
    if misses:
        md.append("\n### Where the missed targets' time goes\n\n")
        md.append(misses)
    md.append("\n## shm targets\n\n")
    md.append(_shm_section(shm, rows, cfg))
    md.append("\n## CPU at realistic message rates\n\n")
    md.append(_rates_section(doc.get("cpu_at_rates") or []))
    md.append("\n## Summary: who wins at each size\n\n")
    md.append(_summary(rows, cfg))
    md.append("\n## Results per payload size\n")
    for size in cfg["sizes"]:
        md.append(f"\n### {_size(size)}\n\n")
        md.append(_size_table([r for r in rows if r["size"] == size]))
    micro = doc.get("micro") or []
    if micro:
        md.append("\n## Framing and codec micro-bench (no transport)\n\n")
        md.append(_micro_table(micro))
    others = [p for p in plots if p.name != _FIGURE]
    if others:
        md.append("\n## More plots\n\n" + "".join(f"![{p.stem}]({p.name})\n\n" for p in others))
    return "".join(md)


def _framing(cfg: dict[str, Any]) -> str:
    return DEFAULT_FRAMING if DEFAULT_FRAMING in cfg["framings"] else cfg["framings"][0]


_KIND_ORDER = {"ipcgw": 0, "raw": 1, "c": 2, "peer": 3}


def _size_table(rows: list[dict[str, Any]]) -> str:
    rows = sorted(rows, key=lambda r: (r["placement"] != "same", _KIND_ORDER[r["kind"]],
                                       r["transport"], r["framing"]))
    header = ["placement", "kind", "transport", "framing", "p50 µs", "p99 µs", "msgs/s", "MB/s",
              "CPU µs/rtt cli/srv", "CPU µs/msg cli/srv", "p50 ÷ raw", "MB/s ÷ raw", "p50 ÷ C",
              "MB/s ÷ C"]
    lines = []
    for r in rows:
        if r["note"].startswith("error"):
            lines.append([r["placement"], r["kind"], r["transport"], r["framing"] or "-",
                          r["note"].replace("|", "/")[:120], *["-"] * 9])
            continue
        framing = r["framing"] or "-"
        if r.get("lat_floor_us") is not None:
            framing = f"floor {_us(r['lat_floor_us'])} µs (work {r['floor_work_us']:g} µs)"
        lines.append([
            r["placement"], r["kind"], r["transport"], framing,
            _us(r["lat_p50_us"]), _us(r["lat_p99_us"]), _int(r["msgs_per_s"]), _int(r["mb_per_s"]),
            f"{_us(r['cpu_client_us_per_rtt'])} / {_us(r['cpu_server_us_per_rtt'])}",
            f"{_us(r['cpu_client_us_per_msg'])} / {_us(r['cpu_server_us_per_msg'])}",
            _xs(r, "p50_vs_raw"), _xs(r, "tp_vs_raw"), _xs(r, "p50_vs_c"), _xs(r, "tp_vs_c"),
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
                lat = f"{name(by_lat[0])} {_us(by_lat[0]['lat_p50_us'])} µs"
                if len(by_lat) > 1:
                    lat += (f", {_xr(by_lat[1]['lat_p50_us'] / by_lat[0]['lat_p50_us'])} ahead "
                            f"of {name(by_lat[1])}")
            if by_tp:
                tp = f"{name(by_tp[0])} {_int(by_tp[0]['mb_per_s'])} MB/s"
                if len(by_tp) > 1:
                    tp += f", {_xr(by_tp[0]['mb_per_s'] / by_tp[1]['mb_per_s'])} {name(by_tp[1])}"
            best_peer = min((r for r in peers if r["lat_p50_us"]), key=lambda r: r["lat_p50_us"],
                            default=None)
            if best_peer and by_lat:
                q = best_peer["lat_p50_us"] / by_lat[0]["lat_p50_us"]
                zmq = [r for r in peers if r["transport"].startswith("zmq") and r["lat_p50_us"]]
                vs_peer = (f"best peer {best_peer['transport']} {_us(best_peer['lat_p50_us'])} µs "
                           f"({_xr(q)} ipcgw's best)")
                if zmq:
                    z = min(zmq, key=lambda r: r["lat_p50_us"])
                    zq = z["lat_p50_us"] / by_lat[0]["lat_p50_us"]
                    vs_peer += f"; ZeroMQ best {z['transport']} {_xr(zq)}"
            lines.append([_size(size), placement, lat, tp, vs_peer])
    return _table(["size", "placement", "lowest p50 (ipcgw)", "highest MB/s (ipcgw)",
                   "vs peers (p50)"], lines)


#: (column, row size, ratio, goal test, goal text); the goal for p50 ÷ C depends on placement.
_TARGET_COLUMNS: tuple[tuple[str, int, str, Callable[[float, str], bool]], ...] = (
    ("p50 64 B ÷ raw Python (≤ 1.5\u00d7)", 64, "p50_vs_raw", lambda v, p: v <= 1.5),
    ("MB/s 64 KiB ÷ raw Python (≥ 0.8\u00d7)", 64 * 1024, "tp_vs_raw", lambda v, p: v >= 0.8),
    ("MB/s 1 MiB ÷ raw Python (≥ 0.8\u00d7)", 1 << 20, "tp_vs_raw", lambda v, p: v >= 0.8),
    ("p50 64 B ÷ C (≤ 1.2\u00d7 across, ≤ 2.5\u00d7 same)", 64, "p50_vs_c",
     lambda v, p: v <= (1.2 if p == "cross" else 2.5)),
    ("MB/s 1 MiB ÷ C (≥ 0.5\u00d7)", 1 << 20, "tp_vs_c", lambda v, p: v >= 0.5),
)


def _cpu_pair(row: dict[str, Any], unit: str) -> tuple[float, float] | None:
    """(client, server) CPU µs of a row per round trip (``rtt``) or per message (``msg``)."""
    c, srv = row.get(f"cpu_client_us_per_{unit}"), row.get(f"cpu_server_us_per_{unit}")
    return (c, srv) if c is not None and srv is not None else None


def _micro_us(micro: list[dict[str, Any]], name: str, op: str, size: int) -> float | None:
    for m in micro:
        if m["name"] == name and m["op"] == op and m["size"] == size and m["per_s"]:
            return 1e6 / float(m["per_s"])
    return None


def _misses(rows: list[dict[str, Any]], cfg: dict[str, Any], micro: list[dict[str, Any]]) -> str:
    """Each missed target with its measured reason, from the same run: the CPU ipcgw
    spends per round trip (or per message) on each side against the reference's.
    On one CPU the two sides run in turn, so extra CPU is extra latency; across
    CPUs the gap also holds wake-ups, which the CPU figures count as well."""
    framing = _framing(cfg)
    index = {(r["kind"], r["transport"], r["placement"], r["size"], r["framing"] if r["kind"] ==
              "ipcgw" else ""): r for r in _ok(rows)}
    lines = []
    for transport in cfg["transports"]:
        for placement in cfg["placements"]:
            for column, size, name, ok in _TARGET_COLUMNS:
                gw = index.get(("ipcgw", transport, placement, size, framing))
                if gw is None or (v := gw.get(name)) is None or ok(v, placement):
                    continue
                ref_kind = "raw" if name.endswith("raw") else "c"
                ref = index.get((ref_kind, transport, placement, size, ""))
                unit = "rtt" if name.startswith("p50") else "msg"
                mine, theirs = _cpu_pair(gw, unit), _cpu_pair(ref, unit) if ref else None
                if mine is None or theirs is None:
                    continue
                extra = sum(mine) - sum(theirs)
                what = "per round trip" if unit == "rtt" else f"per {_size(size)} message"
                lines.append(
                    f"- {transport} {placement}, {column.split(' (')[0]} = {_xr(v)}: ipcgw "
                    f"{_us(sum(mine))} µs of CPU {what} (client {_us(mine[0])} + server "
                    f"{_us(mine[1])}), {'raw Python' if ref_kind == 'raw' else 'C'} "
                    f"{_us(sum(theirs))} ({_us(theirs[0])} + {_us(theirs[1])}): "
                    f"{'+' if extra >= 0 else ''}{_us(extra)} µs in ipcgw's layers\n")
    if not lines:
        return ""
    enc, dec = (_micro_us(micro, "msgpack Ping", op, 64) for op in ("encode", "decode"))
    fenc, fdec = (_micro_us(micro, framing, op, 64) for op in ("encode", "decode"))
    parts = [f"msgpack Ping encode {enc:.2f} µs, decode {dec:.2f} µs" if enc and dec else "",
             f"`{framing}` framing encode {fenc:.2f} µs, decode {fdec:.2f} µs" if fenc and fdec
             else ""]
    layers = "; ".join(p for p in parts if p)
    return ("Each missed target against the CPU both processes spent in the same run "
            "(`CPU µs/rtt` and `CPU µs/msg` in the tables below). On one CPU the two sides run "
            "in turn, so the extra CPU *is* the extra latency: it is ipcgw's Python per "
            "message on each side (framing, codec, channel, the client's request bookkeeping, "
            "the session loop), not the transport. Across CPUs the gap is also wake-ups, which "
            "these CPU figures include. For 1 MiB the framing and codec no longer copy the "
            "payload (the sender scatter-writes the caller's buffer, the receiver reads into "
            "the frame's buffer and hands the payload out as a view onto it); the extra is "
            "the frame's head read with the frame before it (at most 128 "
            "KiB, copied into the frame) and, on the queue transports, a Python call per 8 KiB "
            "message on each side "
            "(sysv_ipc and posix_ipc hand over bytes, copied once into the frame). "
            "bench/results/ANALYSIS.md takes a round trip apart layer by "
            f"layer{f' (micro-bench in this run: {layers})' if layers else ''}.\n\n"
            + "".join(lines))


def _targets(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    framing = _framing(cfg)
    gw = {(r["transport"], r["placement"], r["size"]): r for r in _ok(rows)
          if r["kind"] == "ipcgw" and r["framing"] == framing}
    header = ["transport", "placement", *(c[0] for c in _TARGET_COLUMNS)]
    lines = []
    met = missed = 0
    for transport in cfg["transports"]:
        for placement in cfg["placements"]:
            if not any((transport, placement, c[1]) in gw for c in _TARGET_COLUMNS):
                continue
            cells = [transport, placement]
            for _, size, name, ok in _TARGET_COLUMNS:
                row = gw.get((transport, placement, size))
                if row is None or (v := row.get(name)) is None:
                    cells.append("-")
                    continue
                good = ok(v, placement)
                met, missed = met + good, missed + (not good)
                cells.append(f"{_xs(row, name)} {'✓' if good else '✗'}")
            lines.append(cells)
    rounds = cfg.get("rounds") or 1
    text = (
        "These are **ipcgw's own performance targets** (set by the maintainers with the bench: "
        "the gateway must cost little over the same syscalls made without it). Each cell is "
        "a ratio **ipcgw ÷ reference**, same transport, payload size and placement, ipcgw with "
        f"framing `{framing}`:\n\n"
        "- *p50 ÷ …*: ipcgw's median round trip divided by the reference's; lower is better, "
        "1.50\u00d7 means ipcgw takes 50 % longer; the goal is a maximum;\n"
        "- *MB/s ÷ …*: ipcgw's one-way throughput divided by the reference's; higher is "
        "better, 0.80\u00d7 means ipcgw moves 80 % as many bytes a second; the goal is a minimum;\n"
        "- *raw Python*: the same transport's syscalls from plain Python (no framing, codec or "
        "sessions); *C*: the same in C (`bench/c/`); across CPUs the p50 reference is the C "
        "floor (see Conditions);\n"
        f"- the ratio is the median of {rounds} interleaved rounds' ratios, min\u2013max in brackets; "
        "✓ met, ✗ missed.\n\n"
        f"**{met} of {met + missed} targets met, {missed} missed.**\n\n")
    return text + _table(header, lines)


def _rates_section(items: list[dict[str, Any]]) -> str:
    if not items:
        return "Not measured (`rate_time` 0, or no server ran).\n"
    floors = {i["rate"]: i for i in items if i["transport"] == "floor" and "error" not in i}
    items = [i for i in items if i["transport"] != "floor"]
    ok = [i for i in items if "error" not in i]
    transports = sorted({i["transport"] for i in items})
    rates = sorted({i["rate"] for i in items})
    by = {(i["transport"], i["rate"]): i for i in items}
    head = ["transport", *(f"{r:,} msg/s: % of a CPU (srv + cli) · µs/msg" for r in rates)]
    lines = []
    for t in transports:
        cells = [t]
        for r in rates:
            i = by.get((t, r))
            if i is None:
                cells.append("-")
            elif "error" in i:
                cells.append(i["error"].replace("|", "/")[:60])
            else:
                lag = "" if i["achieved"] >= 0.95 * r else f" (only {_int(i['achieved'])}/s)"
                floor = floors.get(r, {}).get("us_per_msg")
                vs = f" = {i['us_per_msg'] / floor:.1f}\u00d7 floor" if floor and i["us_per_msg"] else ""
                cells.append(f"{i['cpu_percent']:.1f} % ({i['server_percent']:.1f} + "
                             f"{i['client_percent']:.1f}) · {_us(i['us_per_msg'])}{vs}{lag}")
        lines.append(cells)
    if floors:
        lines.append(["floor: 2 bare wake-ups", *(
            f"{floors[r]['cpu_percent']:.1f} % · {_us(floors[r]['us_per_msg'])} "
            f"(one wake-up {_us(floors[r]['wake_us'])})" if r in floors else "-" for r in rates)])
    first = ok[0] if ok else items[0]
    text = (f"One client pings the run's `ipcgw serve` (framing `{first.get('framing')}`) with "
            "64 B round trips paced on the clock, across CPUs (server on CPU "
            f"{first.get('server_cpu')}, client on CPU {first.get('client_cpu')}), for "
            f"{first.get('seconds', 0):.1f} s per rate; CPU of both processes from "
            "`/proc/PID/task/*/schedstat` (ns, not ticks). µs/msg is the CPU of both sides per "
            "round trip: at low rates it is dominated by how each side waits (spinning, "
            "sleeping, waking up), not by the message. The floor is the same pacing child with "
            "no connection (its ping does nothing): the CPU of one bare wake-up from "
            "`time.sleep` on this machine, twice, since a round trip wakes the client's timer "
            "and the server's wait; no transport can beat it. shm's reader spin adapts: it "
            "halves while data comes long after the spin gave up, so at low rates neither "
            "side spins.\n\n")
    return text + _table(head, lines)


# ---------------------------------------------------------------- shm targets


def shm_targets(rows: list[dict[str, Any]], cfg: dict[str, Any], idle: dict[str, Any] | None,
                interleaved: dict[str, Any] | None = None,
                interleaved_same: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shm issue's three targets, each from this run's own figures: the 64 B p50
    and the 1 MiB throughput of ipcgw over shm against the best syscall transport
    (ipcgw rows, `length:4`, `cross`), and the idle CPU of a connected shm client.
    The p50 target is judged on the interleaved rounds when they ran (the per-case
    table's ratio is kept beside it as ``p50_64B_sequential``). A target whose
    inputs did not run has ``met: None`` and a ``missing`` reason."""
    sequential = _vs_syscall(rows, cfg, 64, "lat_p50_us", SHM_P50_FACTOR)
    out = {
        "framing": SHM_FRAMING, "placement": SHM_PLACEMENT,
        "p50_64B": _interleaved_target(interleaved) or sequential,
        "p50_64B_sequential": sequential,
        "mb_per_s_1MiB": _vs_syscall(rows, cfg, 1 << 20, "mb_per_s", SHM_TP_FACTOR),
        "idle_cpu": _idle_target(idle),
    }
    if "same" in cfg["placements"]:  # the same targets with both sides on one CPU
        seq_same = _vs_syscall(rows, cfg, 64, "lat_p50_us", SHM_P50_FACTOR, "same")
        out["same"] = {
            "placement": "same",
            "p50_64B": _interleaved_target(interleaved_same) or seq_same,
            "p50_64B_sequential": seq_same,
            "mb_per_s_1MiB": _vs_syscall(rows, cfg, 1 << 20, "mb_per_s", SHM_TP_FACTOR, "same"),
        }
    return out


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


def _not_configured(cfg: dict[str, Any], size: int, placement: str = SHM_PLACEMENT) -> str:
    for what, wanted, ran in (("framing", SHM_FRAMING, cfg["framings"]),
                              ("placement", placement, cfg["placements"]),
                              ("size", size, cfg["sizes"]), ("transport", "shm", cfg["transports"])):
        if wanted not in ran:
            shown = _size(wanted) if isinstance(wanted, int) else wanted
            return f"{what} {shown} was not in this run"
    return ""


def _vs_syscall(rows: list[dict[str, Any]], cfg: dict[str, Any], size: int, key: str,
                factor: float, placement: str = SHM_PLACEMENT) -> dict[str, Any]:
    """shm against the best syscall transport on ``key``; for p50 (lower is better)
    the ratio is best/shm, for MB/s shm/best, so the goal is always ratio >= factor.
    With interleaved rounds: the median over rounds of (best of that round) vs shm."""
    lower = key == "lat_p50_us"
    out: dict[str, Any] = {"size": size, "metric": key, "goal_ratio": factor, "met": None,
                           "placement": placement}
    sel = {r["transport"]: r for r in rows if r["kind"] == "ipcgw" and r["size"] == size
           and r["framing"] == SHM_FRAMING and r["placement"] == placement}
    shm = sel.get("shm")
    syscall = {t: r for t, r in sel.items() if t in SYSCALL_TRANSPORTS
               and not r["note"].startswith("error") and r[key]}
    out["compared"] = sorted(syscall)
    out["not_run"] = [t for t in SYSCALL_TRANSPORTS if t not in syscall]
    where = f"{_size(size)}, {placement}, {SHM_FRAMING}"
    if reason := _not_configured(cfg, size, placement):
        out["missing"] = reason
        return out
    if shm is None or shm["note"].startswith("error") or not shm[key]:
        out["missing"] = f"shm did not run at {where}" + (f" ({shm['note']})" if shm else "")
        return out
    if not syscall:
        out["missing"] = (f"no syscall transport ({', '.join(SYSCALL_TRANSPORTS)}) ran at "
                          f"{where}")
        return out
    pick = min if lower else max
    best = pick(syscall, key=lambda t: syscall[t][key])
    ratio = syscall[best][key] / shm[key] if lower else shm[key] / syscall[best][key]
    rkey = "p50_us" if lower else "mb_per_s"
    per_round = []
    for i, mine in enumerate(shm.get("round_values") or []):
        theirs = [v[rkey] for r in syscall.values() if len(r.get("round_values") or []) > i
                  and (v := r["round_values"][i]) and v.get(rkey)]
        if mine and mine.get(rkey) and theirs:
            b = pick(theirs)
            per_round.append(b / mine[rkey] if lower else mine[rkey] / b)
    if per_round:
        ratio = _median(per_round)
        out["rounds"] = [round(x, 3) for x in per_round]
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


def _shm_rows(t: dict[str, Any], placement: str) -> list[list[str]]:
    """The p50 and MB/s target rows of one placement."""
    p50, tp = t["p50_64B"], t["mb_per_s_1MiB"]

    def best(x: dict[str, Any], fmt: Any, unit: str) -> str:
        return "-" if x["met"] is None else f"{x['best']} {fmt(x['best_value'])} {unit}"

    def spread(x: dict[str, Any]) -> str:
        rounds = x.get("interleaved", {}).get("ratios") or x.get("rounds") or []
        if x["met"] is None:
            return "-"
        if len(rounds) > 1:
            return f"{_xr(x['ratio'])} ({min(rounds):.2f}\u2013{max(rounds):.2f})"
        return _xr(x["ratio"])

    return [
        [placement, "p50 round trip, 64 B",
         f"≥ {SHM_P50_FACTOR:g}\u00d7 lower than the best syscall transport",
         "-" if p50["met"] is None else f"{_us(p50['shm'])} µs", best(p50, _us, "µs"),
         _mark(p50, spread(p50))],
        [placement, "one-way MB/s, 1 MiB", f"≥ {SHM_TP_FACTOR:g}\u00d7 the best syscall transport",
         "-" if tp["met"] is None else f"{_int(tp['shm'])} MB/s", best(tp, _int, "MB/s"),
         _mark(tp, spread(tp))],
    ]


def _shm_section(shm: dict[str, Any], rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    idle = shm["idle_cpu"]
    targets = [shm["p50_64B"], shm["mb_per_s_1MiB"], idle]
    same = shm.get("same")
    if same:
        targets += [same["p50_64B"], same["mb_per_s_1MiB"]]
    met = sum(t["met"] is True for t in targets)
    missed = sum(t["met"] is False for t in targets)
    text = (f"The shm issue's targets, each from this run: ipcgw rows, framing `{SHM_FRAMING}`, "
            "across CPUs (the issue's placement) and, for the same targets, both sides on one "
            f"CPU; {met} met, {missed} missed, {len(targets) - met - missed} not measured. "
            "p50: best syscall transport's p50 ÷ shm's (higher is better); MB/s: shm's ÷ the "
            "best syscall transport's.\n\n")
    lines = _shm_rows(shm, SHM_PLACEMENT)
    lines.append([
        "-", "idle CPU, one connected silent client",
        f"< {IDLE_TARGET_PCT:g} % of one CPU (server + client)",
        "-" if idle["met"] is None else f"{idle['percent']:.2f} % over {idle['seconds']:.1f} s",
        "-", _mark(idle, "-" if idle["met"] is None else f"{idle['percent']:.2f} %")])
    if same:
        lines += _shm_rows(same, "same")
    text += _table(["placement", "target", "goal", "shm", "best syscall transport", "result"],
                   lines)
    return text + _shm_notes(shm, rows)


def _shm_notes(shm: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """How each p50 was taken, which syscall transports were compared, the idle
    figure's parts, and the shm mechanism's own floor (raw Python, C) for scale."""
    notes = []
    for t in (shm, shm.get("same")):
        if not t:
            continue
        p50, seq = t["p50_64B"], t.get("p50_64B_sequential")
        where = t.get("placement", SHM_PLACEMENT)
        if "interleaved" in p50:
            ab = p50["interleaved"]
            notes.append(
                f"p50 ({where}): {ab['rounds']} tight interleaved rounds of {ab['slice_s']:g} s "
                "per transport on open connections (`bench/interleave.py`), ratio = median of "
                f"the per-round ratios ({', '.join(_xr(r) for r in ab['ratios'])})")
            if seq and seq["met"] is not None:
                notes.append(f"p50 ({where}) from the tables' rounds instead: shm "
                             f"{_us(seq['shm'])} µs, {seq['best']} {_us(seq['best_value'])} µs, "
                             f"{_xr(seq['ratio'])}")
        for x in (p50, t["mb_per_s_1MiB"]):
            if x["met"] is not None and x["not_run"]:
                notes.append(f"{_size(x['size'])} ({where}): best of {', '.join(x['compared'])}; "
                             f"{', '.join(x['not_run'])} did not run")
    idle = shm["idle_cpu"]
    if idle["met"] is not None:
        notes.append(f"idle: `ipcgw serve` {idle['server_cpu_s'] * 1000:.1f} ms + client "
                     f"{idle['client_cpu_s'] * 1000:.1f} ms of CPU (`/proc/PID/task/*/schedstat`) "
                     f"over {idle['seconds']:.1f} s")
    for placement in ("cross", "same"):
        ref = {(r["kind"], r["size"]): r for r in _ok(rows) if r["kind"] in ("raw", "c")
               and r["transport"] == "shm" and r["placement"] == placement}
        scale = [f"{kind} {_size(size)} {fmt(r[key])} {unit}" for kind in ("raw", "c")
                 for size, key, unit, fmt in ((64, "lat_p50_us", "µs p50", _us),
                                              (1 << 20, "mb_per_s", "MB/s", _int))
                 if (r := ref.get((kind, size))) and r[key]]
        if scale:
            notes.append(f"the same rings without ipcgw ({placement}; raw = ipcgw's C `Rings` "
                         "from plain Python, c = `bench/c/shm.c`): " + ", ".join(scale))
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
#: The summary figure's series: what is measured, told apart by colour, marker and label.
SERIES = (
    ("ipcgw", "ipcgw", "tab:blue", "o", True),
    ("raw", "raw Python (same syscalls)", "tab:orange", "s", True),
    ("c", "C (same syscalls)", "tab:green", "^", True),
    ("floor", "C floor (best p50 \u2212 echo work)", "tab:green", "D", False),
)
_PLACEMENT_TITLE = {"same": "same CPU", "cross": "across CPUs"}


def summary_series(rows: list[dict[str, Any]], framing: str
                   ) -> dict[tuple[str, str, str], list[tuple[int, float, float | None]]]:
    """{(series, transport, placement): [(size, p50 us, p99 us or None)]} for the
    summary figure: ipcgw with ``framing``, raw, C, and the C floor where searched."""
    out: dict[tuple[str, str, str], list[tuple[int, float, float | None]]] = {}
    for r in _ok(rows):
        if not r["lat_p50_us"] or r["kind"] not in ("ipcgw", "raw", "c"):
            continue
        if r["kind"] == "ipcgw" and r["framing"] != framing:
            continue
        key = (r["kind"], r["transport"], r["placement"])
        out.setdefault(key, []).append((r["size"], r["lat_p50_us"], r["lat_p99_us"]))
        if r["kind"] == "c" and r.get("lat_floor_us") is not None:
            out.setdefault(("floor", r["transport"], r["placement"]), []).append(
                (r["size"], r["lat_floor_us"], None))
    for pts in out.values():
        pts.sort()
    return out


def _tick_us(v: float, _pos: int = 0) -> str:
    """Log-axis µs ticks as plain numbers: 0.1, 1, 10, 1,000 (not 10^3)."""
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def _summary_figure(plt: Any, rows: list[dict[str, Any]], cfg: dict[str, Any], out: Path
                    ) -> Path | None:
    """The report's first figure: p50 with a p99 whisker, per transport (columns) and
    placement (rows), payload sizes on x, ipcgw / raw Python / C / C floor each with
    its own colour, marker and legend label."""
    from matplotlib.ticker import FuncFormatter

    framing = _framing(cfg)
    series = summary_series(rows, framing)
    transports = [t for t in cfg["transports"] if any(k[1] == t for k in series)]
    placements = [p for p in ("same", "cross") if p in cfg["placements"]]
    sizes = sorted(cfg["sizes"])
    if not transports or not placements or not sizes:
        return None
    fig, axes = plt.subplots(len(placements), len(transports), squeeze=False, sharey=True,
                             figsize=(2.6 * len(transports) + 1.2, 3.0 * len(placements) + 1.4))
    offsets = {"ipcgw": -0.24, "raw": -0.08, "c": 0.08, "floor": 0.24}
    handles: dict[str, Any] = {}
    for i, placement in enumerate(placements):
        for j, transport in enumerate(transports):
            ax = axes[i][j]
            for name, label, color, marker, filled in SERIES:
                pts = series.get((name, transport, placement), [])
                if not pts:
                    continue
                xs = [sizes.index(s) + offsets[name] for s, _, _ in pts if s in sizes]
                p50 = [v for s, v, _ in pts if s in sizes]
                up = [max(0.0, (p99 or v) - v) for s, v, p99 in pts if s in sizes]
                h = ax.errorbar(xs, p50, yerr=[[0.0] * len(p50), up], fmt=marker, color=color,
                                markersize=6, capsize=2.5, elinewidth=1.1, linestyle="none",
                                markerfacecolor=color if filled else "white",
                                markeredgecolor=color, label=label)
                handles.setdefault(label, h)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_tick_us))
            ax.set_xticks(range(len(sizes)))
            ax.set_xticklabels([_size(s) for s in sizes], fontsize=8)
            ax.set_xlim(-0.5, len(sizes) - 0.5)
            ax.grid(True, which="major", axis="y", alpha=0.35)
            ax.grid(True, which="minor", axis="y", alpha=0.12)
            if i == 0:
                ax.set_title(transport, fontsize=11, fontweight="bold")
            if j == 0:
                ax.set_ylabel(f"{_PLACEMENT_TITLE[placement]}\nround trip, µs (log)", fontsize=9)
            if i == len(placements) - 1:
                ax.set_xlabel("payload", fontsize=8)
    fig.suptitle(f"Round trip per transport: p50 (marker) with whisker to p99 — ipcgw "
                 f"(framing {framing}) vs the same syscalls without it; lower is better",
                 fontsize=11)
    order = [label for _, label, _, _, _ in SERIES if label in handles]
    fig.legend([handles[k] for k in order], order, loc="lower center", ncol=len(order),
               fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path = out / _FIGURE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(rows: list[dict[str, Any]], hists: dict[tuple[str, str, str, str, int], Histogram],
           doc: dict[str, Any], out: Path) -> tuple[list[Path], str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except ImportError:
        return [], "plots skipped: matplotlib not installed (pip install 'ipcgw[plot]')"
    cfg = doc["config"]
    framing = _framing(cfg)
    placements = cfg["placements"]
    paths = []
    first = _summary_figure(plt, rows, cfg, out)
    if first is not None:
        paths.append(first)

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
            ax.set_title(f"64 B round trip CDF — {_PLACEMENT_TITLE.get(placement, placement)}")
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
            ax.xaxis.set_major_locator(FixedLocator(sorted(cfg["sizes"])))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _size(int(v))))
            ax.set_yscale("log")
            ax.set_xlabel("payload (log)")
            ax.set_title(f"one-way throughput — {_PLACEMENT_TITLE.get(placement, placement)}")
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
