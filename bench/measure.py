"""The timed loops and the record every case produces, whatever runs it.

One loop for every mechanism, so ipcgw, raw Python and the peers pay the
same measurement overhead: a clock read on each side of the round trip and
a histogram increment outside it. Loops run for a time budget rather than a
count, so a full run's duration is known in advance whatever the speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .hist import Histogram

__all__ = ["CSV_COLUMNS", "Record", "batch_for", "latency_loop", "merge_rounds", "throughput_loop",
           "warm_up"]

MIN_SAMPLES = 20


def warm_up(fn: Callable[[Any], object], arg: Any, budget: float, limit: int = 200) -> int:
    """Untimed round trips: page in buffers, grow pipes, let caches and the scheduler settle."""
    end = time.perf_counter() + budget
    n = 0
    while n < 3 or (n < limit and time.perf_counter() < end):
        fn(arg)
        n += 1
    return n


def latency_loop(fn: Callable[[Any], object], arg: Any, budget: float,
                 max_count: int = 10_000_000) -> Histogram:
    clock = time.perf_counter_ns
    hist = Histogram()
    record = hist.record
    end = clock() + int(budget * 1e9)
    n = 0
    while True:
        t0 = clock()
        fn(arg)
        t1 = clock()
        record(t1 - t0)
        n += 1
        if (t1 >= end and n >= MIN_SAMPLES) or n >= max_count:
            return hist


def batch_for(size: int) -> int:
    """Messages sent between two clock reads: enough to hide the clock, few enough to stop on time."""
    return 16 if size <= 4096 else 4 if size <= 256 * 1024 else 1


def throughput_loop(fn: Callable[[Any], object], arg: Any, budget: float, batch: int) -> int:
    clock = time.perf_counter
    end = clock() + budget
    n = 0
    steps = range(batch)
    while True:
        for _ in steps:
            fn(arg)
        n += batch
        if clock() >= end:
            return n


@dataclass
class Record:
    """One (mechanism, transport, framing, placement, size) result."""

    kind: str  # ipcgw | raw | c | peer
    transport: str
    framing: str
    placement: str
    size: int
    hist: Histogram | None = None
    rtt_count: int = 0
    cpu_client_rtt: float = float("nan")  # CPU seconds over the latency phase
    cpu_server_rtt: float = float("nan")
    tp_msgs: int = 0
    tp_seconds: float = float("nan")
    cpu_client_tp: float = float("nan")
    cpu_server_tp: float = float("nan")
    note: str = ""
    load1: float | None = None  # 1-min load average when the case started (others' work)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return (self.kind, self.transport, self.framing, self.placement, self.size)

    def row(self) -> dict[str, Any]:
        """Flat figures for CSV/JSON: latency in us, throughput, CPU us per message."""
        lat = self.hist.summary_us() if self.hist is not None and self.hist.total else {}
        msgs_s = self.tp_msgs / self.tp_seconds if self.tp_msgs and self.tp_seconds > 0 else None
        row: dict[str, Any] = {
            "kind": self.kind, "transport": self.transport, "framing": self.framing,
            "placement": self.placement, "size": self.size,
            "rtt_count": self.rtt_count,
            **{f"lat_{k}_us": lat.get(k) for k in ("min", "p50", "p90", "p99", "p999", "max")},
            "tp_msgs": self.tp_msgs,
            "tp_seconds": _round(self.tp_seconds, 4),
            "msgs_per_s": _round(msgs_s, 1),
            "mb_per_s": _round(msgs_s * self.size / 1e6 if msgs_s else None, 2),
            "cpu_client_us_per_rtt": _per(self.cpu_client_rtt, self.rtt_count),
            "cpu_server_us_per_rtt": _per(self.cpu_server_rtt, self.rtt_count),
            "cpu_client_us_per_msg": _per(self.cpu_client_tp, self.tp_msgs),
            "cpu_server_us_per_msg": _per(self.cpu_server_tp, self.tp_msgs),
            "load1": self.load1,
            "rounds": len(self.extra.get("rounds", [])) or None,
            "lat_floor_us": self.extra.get("floor_us"),
            "floor_work_us": self.extra.get("floor_work_us"),
            "note": self.note,
        }
        return row

    def round_values(self) -> dict[str, float | None]:
        """This record's figures as one round of an interleaved series."""
        lat = self.hist.percentile(50) / 1000 if self.hist is not None and self.hist.total else None
        msgs_s = self.tp_msgs / self.tp_seconds if self.tp_msgs and self.tp_seconds > 0 else None
        return {"p50_us": None if lat is None else round(lat, 3),
                "mb_per_s": None if msgs_s is None else round(msgs_s * self.size / 1e6, 3),
                "floor_us": self.extra.get("floor_us")}


def merge_rounds(rounds: list[Record]) -> Record:
    """One record from the rounds of a case: histograms merged, counts and CPU summed;
    ``extra["rounds"]`` keeps each round's p50 / MB/s (None where it failed), so
    ratios can be taken round by round. A failed round leaves a note; all failed,
    the record is the first error."""
    ok = [r for r in rounds if not r.note.startswith("error")]
    first = rounds[0]
    if not ok:
        return first
    out = Record(first.kind, first.transport, first.framing, first.placement, first.size,
                 hist=Histogram(), cpu_client_rtt=0.0, cpu_server_rtt=0.0, tp_seconds=0.0,
                 cpu_client_tp=0.0, cpu_server_tp=0.0)
    assert out.hist is not None
    levels: dict[float, Histogram] = {}
    for r in ok:
        if r.hist is not None:
            out.hist.merge(r.hist)
        out.rtt_count += r.rtt_count
        out.tp_msgs += r.tp_msgs
        for name in ("cpu_client_rtt", "cpu_server_rtt", "tp_seconds", "cpu_client_tp",
                     "cpu_server_tp"):
            setattr(out, name, getattr(out, name) + getattr(r, name))
        for work, hist in r.extra.get("work_hists", {}).items():
            levels.setdefault(work, Histogram()).merge(hist)
    out.load1 = first.load1
    out.extra["rounds"] = [None if r.note.startswith("error") else r.round_values() for r in rounds]
    if levels:
        from .cfloor import pick_floor

        p50s = {w: h.percentile(50) / 1000 for w, h in levels.items() if h.total}
        floor, work = pick_floor(p50s)
        out.extra.update(floor_us=round(floor, 3), floor_work_us=work,
                         p50_by_work_us={str(w): round(v, 3) for w, v in sorted(p50s.items())})
    failed = [r.note for r in rounds if r.note.startswith("error")]
    if failed:
        out.note = f"{len(failed)} of {len(rounds)} rounds failed: {failed[0]}"[:400]
    return out


def _round(v: float | None, digits: int) -> float | None:
    if v is None or v != v:  # None or NaN
        return None
    return round(v, digits)


def _per(seconds: float, count: int) -> float | None:
    if not count or seconds != seconds:
        return None
    return round(seconds / count * 1e6, 3)


CSV_COLUMNS = [*Record("", "", "", "", 0).row(), "p50_vs_raw", "tp_vs_raw", "p50_vs_c", "tp_vs_c"]
