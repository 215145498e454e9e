"""A log-bucketed latency histogram (HDR-style) with a fixed memory footprint.

Why not a list of samples: at 10^6 round trips a list costs tens of MB and
its growth shows up as latency spikes in the very loop being measured. Here
a sample is one integer increment in a preallocated list.

Layout (shared with ``bench/c/common.h``, which emits the same buckets):
values below ``2**SUB_BITS`` get one bucket each; above, every power of two
is split into ``2**(SUB_BITS-1)`` equal buckets, so a bucket is at most
1/128 of its value wide and the midpoint is within 0.4 % of any sample in it.
Exact min and max are kept aside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["PERCENTILES", "SUB_BITS", "Histogram", "bucket_bounds", "bucket_index"]

SUB_BITS = 8
_LINEAR = 1 << SUB_BITS  # values below this are exact
_HALF = _LINEAR >> 1  # sub-buckets per power of two above that
_NBUCKETS = _LINEAR + (64 - SUB_BITS) * _HALF  # enough for any 64-bit value

#: The percentiles every report shows, with their column names.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("min", 0.0), ("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("max", 100.0),
)


def bucket_index(value: int) -> int:
    if value < _LINEAR:
        return max(value, 0)
    shift = value.bit_length() - SUB_BITS
    return _LINEAR + (shift - 1) * _HALF + (value >> shift) - _HALF


def bucket_bounds(index: int) -> tuple[int, int]:
    """Smallest value of bucket ``index`` and its width."""
    if index < _LINEAR:
        return index, 1
    k = index - _LINEAR
    shift = k // _HALF + 1
    return (k % _HALF + _HALF) << shift, 1 << shift


class Histogram:
    """Counts of non-negative integers (nanoseconds, by convention)."""

    __slots__ = ("counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.total = 0
        self.min = -1
        self.max = -1

    def record(self, value: int) -> None:
        # Inlined bucket_index: this runs once per measured round trip.
        if value < _LINEAR:
            idx = max(value, 0)
        else:
            shift = value.bit_length() - SUB_BITS
            idx = _LINEAR + (shift - 1) * _HALF + (value >> shift) - _HALF
        self.counts[idx] += 1
        self.total += 1
        if value > self.max:
            self.max = value
        if value < self.min or self.min < 0:
            self.min = value

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        for i, c in other.buckets():
            self.counts[i] += c
        self.total += other.total
        if other.total:
            self.max = max(self.max, other.max)
            self.min = other.min if self.min < 0 else min(self.min, other.min)

    def buckets(self) -> Iterator[tuple[int, int]]:
        """Non-empty buckets as (index, count), ascending."""
        return ((i, c) for i, c in enumerate(self.counts) if c)

    def _value(self, index: int) -> int:
        low, width = bucket_bounds(index)
        mid = low + (width - 1) // 2
        return min(max(mid, self.min), self.max)

    def percentile(self, p: float) -> int:
        """Value at percentile ``p`` (0..100): the smallest v with at least p % of samples <= v."""
        return self.percentiles([p])[0]

    def percentiles(self, ps: Iterable[float]) -> list[int]:
        wanted = list(ps)
        if not self.total:
            return [0 for _ in wanted]
        out: list[int] = []
        for p in wanted:
            if p <= 0:
                out.append(self.min)
                continue
            if p >= 100:
                out.append(self.max)
                continue
            rank = max(1, math.ceil(p * self.total / 100 - 1e-9))
            seen = 0
            for i, c in self.buckets():
                seen += c
                if seen >= rank:
                    out.append(self._value(i))
                    break
        return out

    def summary_us(self) -> dict[str, float]:
        """The report's percentiles in microseconds (the histogram holds ns)."""
        values = self.percentiles(p for _, p in PERCENTILES)
        return {name: round(v / 1000, 3) for (name, _), v in zip(PERCENTILES, values, strict=True)}

    def cdf(self) -> list[tuple[int, float]]:
        """(upper value of bucket, fraction of samples <= it) for plotting."""
        out, seen = [], 0
        for i, c in self.buckets():
            seen += c
            low, width = bucket_bounds(i)
            out.append((min(low + width - 1, self.max), seen / self.total))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"sub_bits": SUB_BITS, "total": self.total, "min": self.min, "max": self.max,
                "buckets": [[i, c] for i, c in self.buckets()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        if data.get("sub_bits", SUB_BITS) != SUB_BITS:
            raise ValueError(f"histogram has sub_bits {data['sub_bits']}, expected {SUB_BITS}")
        h = cls()
        for i, c in data["buckets"]:
            h.counts[int(i)] += int(c)
        h.total = sum(h.counts)
        h.min, h.max = int(data["min"]), int(data["max"])
        return h
