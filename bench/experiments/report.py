"""report.md + results.csv + plots from ``results.jsonl`` alone, and ``compare``.

Everything here reads the JSONL the runner wrote (last record per cell key
wins, so a re-run cell replaces its earlier result), which is why a report
can be rebuilt, or two reports compared, long after the runs. Plots need
matplotlib (the ``plot`` extra); without it the report says so and keeps the
tables.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .runner import RESULTS
from .stats import Summary, summarize

__all__ = ["build_report", "compare", "load_results", "write_csv"]

LEAD = ["key", "status", "reason", "setup", "dataplane", "dataplane_ran", "policy", "transport",
        "workload", "label", "size", "rep", "seed", "bytes", "time_s", "retrans", "lost_pkts"]
Group = tuple[str, str, str, str]  # setup, policy, transport, label


def load_results(out_dir: Path) -> list[dict[str, Any]]:
    by_key: dict[str, dict[str, Any]] = {}
    path = Path(out_dir) / RESULTS
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        by_key[rec["key"]] = rec
    return list(by_key.values())


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    extra = sorted({k for r in records for k, v in r.items() if _scalar(v)} - set(LEAD))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LEAD + extra, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: r.get(k) for k in LEAD + extra})


def _groups(records: Iterable[dict[str, Any]]) -> dict[Group, list[dict[str, Any]]]:
    out: dict[Group, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            out[(r["setup"], r["policy"], r["transport"], r["label"])].append(r)
    return out


def _summ(rows: list[dict[str, Any]], key: str) -> Summary:
    return summarize([float(r[key]) for r in rows if isinstance(r.get(key), int | float)])


def _fmt(s: Summary, scale: float = 1.0, digits: int = 3) -> str:
    if s.n == 0:
        return "-"
    if math.isnan(s.ci95):
        return f"{s.mean * scale:.{digits}g}"
    return f"{s.mean * scale:.{digits}g} ± {s.ci95 * scale:.2g}"


def _who(policy: str, transport: str) -> str:
    return policy if transport == "-" else f"{policy}/{transport}"


def _share(rows: list[dict[str, Any]], path: int) -> Summary:
    vals = []
    for r in rows:
        total = r.get("bytes_sent_total") or 0
        if total:
            vals.append((r.get(f"p{path}_bytes") or 0) / total)
    return summarize(vals)


def _tables(records: list[dict[str, Any]]) -> list[str]:
    groups = _groups(records)
    lines: list[str] = []
    files = sorted((g for g in groups if g[3].startswith(("file:", "iperf3:"))),
                   key=lambda g: (g[0], g[3].split(":")[0], groups[g][0]["size"], g[1], g[2]))
    if files:
        lines += ["## File transfers", "",
                  "Transmission time is first byte sent → last byte received (s); mean ± 95 % CI "
                  "half-width over repetitions (Student t). Retransmissions are the sender's "
                  "`tcpi_total_retrans` summed over subflows; losses are packets dropped on the "
                  "paths (nft counters on veth; on ns3 what the simulation lost for good, per "
                  "cause below); *on path 2* is the share "
                  "of bytes the sender put on subflows of path 2.", "",
                  "| setup | workload | policy | n | time (s) | goodput (Mbit/s) | retrans | "
                  "lost pkts | on path 2 |", "|---|---|---|---|---|---|---|---|---|"]
        for g in files:
            rows = groups[g]
            gp = summarize([r["bytes"] * 8 / r["time_s"] / 1e6 for r in rows
                            if r.get("time_s")])
            lines.append(f"| {g[0]} | {g[3]} | {_who(g[1], g[2])} | {len(rows)} | "
                         f"{_fmt(_summ(rows, 'time_s'))} | {_fmt(gp)} | "
                         f"{_fmt(_summ(rows, 'retrans'))} | {_fmt(_summ(rows, 'lost_pkts'))} | "
                         f"{_fmt(_share(rows, 2), 100, 2)}{'' if _share(rows, 2).n == 0 else ' %'} |")
        lines.append("")
    videos = sorted(g for g in groups if g[3].startswith("video:"))
    if videos:
        lines += ["## Video-like stream", "",
                  "Frames on time: complete before their fixed play-out deadline (startup buffer "
                  "+ i/fps). Stalls: a buffering player pauses when the next frame is missing; "
                  "total stall time is the sum of those pauses.", "",
                  "| setup | stream | policy | n | frames on time | stalls | stall time (s) | "
                  "retrans | lost pkts |", "|---|---|---|---|---|---|---|---|---|"]
        for g in videos:
            rows = groups[g]
            lines.append(f"| {g[0]} | {g[3]} | {_who(g[1], g[2])} | {len(rows)} | "
                         f"{_fmt(_summ(rows, 'on_time_ratio'), 100)} % | "
                         f"{_fmt(_summ(rows, 'stalls'))} | {_fmt(_summ(rows, 'stall_time_s'))} | "
                         f"{_fmt(_summ(rows, 'retrans'))} | {_fmt(_summ(rows, 'lost_pkts'))} |")
        lines.append("")
    react: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok" and isinstance(r.get("reaction_ms"), int | float):
            react[(r["setup"], r["policy"], r["transport"])].append(r)
    if react:
        lines += ["## Path-manager reaction time per IPC transport", "",
                  "From the sim time of the report that made the policy act (mapped to the "
                  "wall clock) to the kernel's ACK of the endpoint flag change: IPC + policy + "
                  "path manager only. It leaves out both RSSI filters (client and policy), "
                  "which put the decision 0.4-1.3 s after the propagation model crossed the "
                  "threshold; see the handover run's `chain` (ns3_side/lab/DATAPLANE.md). *IPC* is "
                  "the part until the gateway had the report; *seen* is when a 2 ms poller of "
                  "the endpoint table saw it; *report delay* is the median delay of all "
                  "reports.", "",
                  "| setup | policy | transport | n | reaction (ms) | IPC (ms) | seen (ms) | "
                  "report delay (ms) | handover at sim (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for (setup, policy, transport), rows in sorted(react.items()):
            lines.append(f"| {setup} | {policy} | {transport} | {len(rows)} | "
                         f"{_fmt(_summ(rows, 'reaction_ms'))} | {_fmt(_summ(rows, 'reaction_ipc_ms'))} | "
                         f"{_fmt(_summ(rows, 'reaction_seen_ms'))} | {_fmt(_summ(rows, 'ipc_median_ms'))} | "
                         f"{_fmt(_summ(rows, 'handover_sim_s'))} |")
        lines.append("")
    lines += _loss_table(records)
    lines += _station_table(records)
    return lines


def _station_table(records: list[dict[str, Any]]) -> list[str]:
    """Cells with several stations: each station's own transfer, losses and handover."""
    rows_by: dict[tuple[str, str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            for st in r.get("stations") or []:
                rows_by[(r["setup"], r["label"], r["policy"], r["transport"],
                         int(st["station"]))].append(st)
    if not rows_by:
        return []
    lines = ["## Per station", "",
             "Several stations in one simulation, each in its own namespace pair with its own "
             "gateway session, policy server and transfer (station k's WiFi starts "
             "(k-1) x `station_spacing_m` further out, so it crosses the threshold later). "
             "*lost* is what that station's paths lost for good; *by cause* sums its causes "
             "over the cells (WiFi PHY misses are attempts, not losses).", "",
             "| setup | workload | policy | station | n | time (s) | lost pkts | by cause | "
             "reaction (ms) | handover at sim (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (setup, workload, policy, transport, k), rows in sorted(rows_by.items()):
        causes: dict[str, int] = defaultdict(int)
        for row in rows:
            for key, n in row.items():
                if key.startswith("p") and "_loss_" in key and isinstance(n, int) and n:
                    causes[key.partition("_loss_")[2]] += n
        by = ", ".join(f"{c} {n}" for c, n in sorted(causes.items())) or "-"
        lines.append(f"| {setup} | {workload} | {_who(policy, transport)} | {k} | {len(rows)} | "
                     f"{_fmt(_summ(rows, 'time_s'))} | {_fmt(_summ(rows, 'lost_pkts'))} | {by} | "
                     f"{_fmt(_summ(rows, 'reaction_ms'))} | {_fmt(_summ(rows, 'handover_sim_s'))} |")
    lines.append("")
    return lines


def _loss_table(records: list[dict[str, Any]]) -> list[str]:
    """Per path: the kernel's retransmissions next to what the simulation lost, by cause."""
    rows_by: dict[tuple[str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    causes: set[str] = set()
    for r in records:
        if r.get("status") != "ok":
            continue
        paths: set[int] = set()
        for key in r:
            if key.startswith("p") and "_loss_" in key:
                num, _, cause = key[1:].partition("_loss_")
                if num.isdigit():
                    causes.add(cause)
                    paths.add(int(num))
        for path in paths:
            rows_by[(r["setup"], r["policy"], r["transport"], path)].append(r)
    if not rows_by:
        return []
    cols = sorted(causes, key=lambda c: (c.startswith("phy_"), c))
    lines = ["## Losses per path and cause", "",
             "Where the simulation lost packets, per path (both directions, mean per cell): "
             "`queue` = device/MAC queue full, `error_model` = the p2p link's RateErrorModel, "
             "`mac_retry_limit` / `mac_expired` = the WiFi MAC gave up; `phy_*` are frames the "
             "WiFi PHY missed (its WifiPhyRxfailureReason, `phy_rx_error` = payload not "
             "decoded), which the MAC may have retransmitted, so they are attempts, not losses. "
             "*retrans* is the sender kernel's `tcpi_total_retrans` on that path's subflows.", "",
             "| setup | policy | path | n | retrans | " + " | ".join(cols) + " |",
             "|---|---|---|---|---|" + "---|" * len(cols)]
    for (setup, policy, transport, path), rows in sorted(rows_by.items()):
        cells = [_fmt(_summ(rows, f"p{path}_loss_{c}")) if any(
            f"p{path}_loss_{c}" in r for r in rows) else "0" for c in cols]
        lines.append(f"| {setup} | {_who(policy, transport)} | {path} | {len(rows)} | "
                     f"{_fmt(_summ(rows, f'p{path}_retrans'))} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _bounded_err(summaries: Sequence[Summary], scale: float = 1.0, low: float = 0.0,
                 high: float = math.inf) -> list[list[float]]:
    """Asymmetric error bars of mean ± 95 % CI, clipped to what the measure can be
    (no loss below 0, no share above 100 %): matplotlib's ``yerr`` as [below, above]."""
    below, above = [], []
    for s in summaries:
        half = 0.0 if math.isnan(s.ci95) else s.ci95 * scale
        mean = s.mean * scale
        below.append(max(0.0, min(half, mean - low)))
        above.append(max(0.0, min(half, high - mean)))
    return [below, above]


def _n_label(summaries: Sequence[Summary]) -> str:
    ns = sorted({s.n for s in summaries if s.n})
    n = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]} to {ns[-1]}" if ns else "n = 0"
    return f"mean ± 95 % CI, {n} per point"


def _plots(records: list[dict[str, Any]], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["*(plots skipped: matplotlib is not installed — `pip install ipcgw[plot]`)*", ""]
    groups = _groups(records)
    made: list[str] = []
    setups = sorted({g[0] for g in groups})
    for metric, ylabel, fname in (("time_s", "transmission time (s)", "time_vs_size"),
                                  ("retrans", "retransmissions (segments)", "retrans_vs_size"),
                                  ("lost_pkts", "packets lost on the paths", "losses_vs_size")):
        for kind in ("file", "iperf3"):
            series: dict[tuple[str, str], list[tuple[int, Summary]]] = defaultdict(list)
            for g, rows in groups.items():
                if g[3].startswith(kind + ":"):
                    series[(g[0], _who(g[1], g[2]))].append((rows[0]["size"], _summ(rows, metric)))
            series = {k: v for k, v in series.items() if any(s.n for _, s in v)}
            if not series:
                continue
            fig, axes = plt.subplots(1, len(setups), figsize=(5.5 * len(setups), 4), squeeze=False)
            drawn: list[Summary] = []
            for ax, setup in zip(axes[0], setups, strict=True):
                for (s_name, who), pts in sorted(series.items()):
                    if s_name != setup:
                        continue
                    pts.sort()
                    xs = [p[0] / 1024 for p in pts]
                    ys = [p[1].mean for p in pts]
                    drawn.extend(p[1] for p in pts)
                    ax.errorbar(xs, ys, yerr=_bounded_err([p[1] for p in pts]), marker="o",
                                capsize=3, label=who)
                ax.set_xscale("log")
                if metric == "time_s":
                    ax.set_yscale("log")
                ax.set_xlabel("size (KiB)")
                ax.set_ylabel(ylabel)
                ax.set_title(f"{kind} — {setup}")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(_n_label(drawn), fontsize=9)
            fig.tight_layout()
            name = f"{fname}_{kind}.png" if kind != "file" else f"{fname}.png"
            fig.savefig(out_dir / name, dpi=110)
            plt.close(fig)
            made.append(name)
    videos = {g: rows for g, rows in groups.items() if g[3].startswith("video:")}
    if videos:
        keys = sorted(videos)
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(keys)), 4))
        vals = [_summ(videos[k], "on_time_ratio") for k in keys]
        ax.bar(range(len(keys)), [v.mean * 100 for v in vals],
               yerr=_bounded_err(vals, 100.0, 0.0, 100.0), capsize=3)
        ax.set_title(_n_label(vals), fontsize=9)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{k[0]}\n{_who(k[1], k[2])}\n{k[3]}" for k in keys], fontsize=7)
        ax.set_ylabel("frames on time (%)")
        ax.set_ylim(0, 105)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "video_on_time.png", dpi=110)
        plt.close(fig)
        made.append("video_on_time.png")
    react: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok" and isinstance(r.get("reaction_ms"), int | float):
            react[(r["setup"], r["transport"])].append(r)
    if react:
        rkeys = sorted(react)
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rkeys)), 4))
        tot = [_summ(react[k], "reaction_ms") for k in rkeys]
        ipc = [_summ(react[k], "reaction_ipc_ms") for k in rkeys]
        x = range(len(rkeys))
        ax.bar(x, [t.mean for t in tot], yerr=_bounded_err(tot), capsize=3,
               label="report → kernel ACK")
        ax.set_title(_n_label(tot), fontsize=9)
        ax.bar(x, [i.mean for i in ipc], width=0.5, label="IPC part")
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"{k[1]}\n{k[0]}" for k in rkeys], fontsize=8)
        ax.set_ylabel("reaction time (ms)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "reaction_per_transport.png", dpi=110)
        plt.close(fig)
        made.append("reaction_per_transport.png")
    return [f"![{n}]({n})" for n in made] + [""]


def build_report(out_dir: Path) -> Path:
    """Write results.csv, the plots and report.md into ``out_dir``; returns report.md."""
    out_dir = Path(out_dir)
    records = load_results(out_dir)
    write_csv(records, out_dir / "results.csv")
    meta = json.loads((out_dir / "meta.json").read_text()) if (out_dir / "meta.json").exists() else {}
    name = meta.get("experiment", {}).get("name", out_dir.name)
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    ran = sorted({str(r.get("dataplane_ran")) for r in records})
    lines = [f"# Experiment `{name}`", "",
             f"{len(records)} cells: {len(ok)} ok, {len(failed)} failed. Data plane(s) that ran: "
             f"{', '.join(ran)}. Built from `{RESULTS}` by `ipcgw experiment report`.", ""]
    few = sorted({len(rows) for rows in _groups(records).values() if len(rows) < 3})
    if few:
        lines += [f"> **Warning: some means rest on n = {', '.join(map(str, few))} repetition(s).** "
                  "A 95 % interval from fewer than 3 is wide or undefined (shown as ±nan or no "
                  "whisker): raise `repetitions` before drawing conclusions.", ""]
    lines += _tables(records)
    lines += ["## Plots", "", *_plots(records, out_dir)]
    if failed:
        lines += ["## Failed cells", "", "| cell | reason |", "|---|---|"]
        lines += [f"| {r['key']} | {str(r.get('reason')).splitlines()[0][:200]} |" for r in failed]
        lines.append("")
    lines += ["## Versions", ""]
    for run in meta.get("runs", []):
        v = run.get("versions", {})
        lines.append("- " + ", ".join(f"{k} {v[k]}" for k in sorted(v)))
    config = out_dir / "config.toml"
    if config.exists():
        lines += ["", "## Configuration", "", "```toml", config.read_text().rstrip(), "```"]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _means(records: list[dict[str, Any]]) -> dict[tuple[Group, str], Summary]:
    out = {}
    for g, rows in _groups(records).items():
        for metric in ("time_s", "retrans", "lost_pkts", "on_time_ratio", "stall_time_s",
                       "reaction_ms"):
            s = _summ(rows, metric)
            if s.n:
                out[(g, metric)] = s
    return out


def compare(a: Path, b: Path) -> str:
    """Markdown: every measure both reports have, A vs B, with the change and whether
    the 95 % intervals overlap (no overlap: the difference is unlikely to be noise)."""
    ma, mb = _means(load_results(Path(a))), _means(load_results(Path(b)))
    lines = [f"# Compare A = `{a}` vs B = `{b}`", "",
             "| setup | workload | policy | measure | A | B | B - A | CIs overlap |",
             "|---|---|---|---|---|---|---|---|"]
    common = sorted(set(ma) & set(mb))
    for key in common:
        (setup, policy, transport, label), metric = key
        sa, sb = ma[key], mb[key]
        rel = ((sb.mean - sa.mean) / sa.mean * 100) if sa.mean else math.nan
        overlap = ("?" if math.isnan(sa.ci95) or math.isnan(sb.ci95)
                   else "yes" if sa.low <= sb.high and sb.low <= sa.high else "**no**")
        lines.append(f"| {setup} | {label} | {_who(policy, transport)} | {metric} | {_fmt(sa)} | "
                     f"{_fmt(sb)} | {rel:+.1f} % | {overlap} |")
    only_a, only_b = len(set(ma) - set(mb)), len(set(mb) - set(ma))
    lines += ["", f"{len(common)} measures in both; {only_a} only in A, {only_b} only in B."]
    return "\n".join(lines) + "\n"

