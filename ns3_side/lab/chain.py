"""The handover's reaction chain: each step from where it happened, on one clock.

Every instant is ``CLOCK_MONOTONIC`` of this host (namespaces share it): the
simulation stamps its reports (``host_mono``) and its model crossing, the
policy stamps its decision and the kernel's ACK, the sampler its rows. So
no sim-time → wall-time estimate enters any figure. The steps:

==================  =============================================================
model crossing      the propagation model's RSSI at the station's position
                    crosses the threshold (no filter, no frame needed)
first report below  the first report whose (client-filtered) value is below it:
                    the client-side filter and the report rate limit
decision            the policy decided to act: its own filter (alpha / tau_ms)
kernel ACK          the netlink ACK of the endpoint flag change
other path          first sampler row after the ACK in which the other path
                    carried more than before the decision (first bytes moved)
WLAN < 10 %         first row after the ACK in which the WLAN path carried
                    under 10 % of the total: the traffic has moved
==================  =============================================================

Nothing here imports ns-3: the handover run and the experiment runner share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

__all__ = ["STEPS", "reaction_chain"]

STEPS = ("model_crossing", "first_report_below", "decision", "kernel_ack", "other_path_up",
         "wlan_below_10pct")


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 3)


def reaction_chain(threshold: float, *, crossing_mono: float | None,
                   reports: Sequence[tuple[float, float]], decision: dict[str, Any] | None,
                   rows: Sequence[tuple[float, dict[int, int]]] = (), wlan: int = 2,
                   other: int = 1) -> dict[str, Any]:
    """Instants (``<step>_mono``), the time of each step after the one before it
    (``<a>_to_<b>_ms``; both traffic steps count from the kernel ACK), and of every
    step after the model crossing (``model_crossing_to_<step>_ms``) of one handover.

    ``reports``: (host_mono, value) of every report in order; ``decision``: the
    policy's record (``decided_mono``, ``acked_mono``); ``rows``: (mono, {path:
    bytes so far}) of a sampler. A step that did not happen is None, and so is
    every figure that needs it.
    """
    at: dict[str, float | None] = dict.fromkeys(STEPS)
    at["model_crossing"] = crossing_mono
    at["first_report_below"] = next((t for t, v in reports if v < threshold), None)
    if decision is not None:
        at["decision"] = decision.get("decided_mono")
        at["kernel_ack"] = decision.get("acked_mono")
    ack = at["kernel_ack"]
    if ack is not None and len(rows) >= 2:
        before = [(t, b) for t, b in rows if t <= (at["decision"] or ack)]
        other_rate = 0.0
        if len(before) >= 2:
            (ta, ba), (tb, bb) = before[max(0, len(before) - 5)], before[-1]
            other_rate = (bb.get(other, 0) - ba.get(other, 0)) / max(tb - ta, 1e-6)
        for (ta, ba), (tb, bb) in pairwise(rows):
            if tb <= ack:
                continue
            dt = max(tb - ta, 1e-6)
            d_other = bb.get(other, 0) - ba.get(other, 0)
            d_wlan = bb.get(wlan, 0) - ba.get(wlan, 0)
            if at["other_path_up"] is None and d_other / dt > other_rate * 1.05 and d_other > 0:
                at["other_path_up"] = tb
            total = d_other + d_wlan
            if at["wlan_below_10pct"] is None and total > 0 and d_wlan < 0.1 * total:
                at["wlan_below_10pct"] = tb
    out: dict[str, Any] = {f"{s}_mono": at[s] for s in STEPS}
    pairs = [*pairwise(STEPS[:4]), ("kernel_ack", "other_path_up"),
             ("kernel_ack", "wlan_below_10pct")]
    for a, b in pairs:
        out[f"{a}_to_{b}_ms"] = _ms(at[a], at[b])
    for s in STEPS[1:]:
        out[f"model_crossing_to_{s}_ms"] = _ms(at["model_crossing"], at[s])
    out["threshold_dbm"] = threshold
    return out
