"""The video-like stream: a frame schedule and how a player would have fared.

Frames are sent at a constant rate; frame ``i`` is due for play-out at
``start + startup_s + i / fps`` (``start``: the send time of frame 0). Two
scores, because they answer different questions:

* **on time** — frames complete before their *fixed* deadline: what a live
  stream (which cannot pause) shows.
* **stalls** — a buffering player: when the next frame is not there at its
  (shifted) play-out time, playback stops until it is (one stall, its length
  added to the total) and later deadlines move by the same amount: what a
  viewer of on-demand video sees.

Pure functions, so the scoring is unit-tested without namespaces.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["VideoScore", "frame_sizes", "score"]

HEADER_BYTES = 16  # struct "!IId": index, size, send time (see agent.py)


def frame_sizes(bitrate_mbit: float, fps: float, duration_s: float, seed: int,
                gop: int = 12, i_ratio: float = 4.0, jitter: float = 0.2) -> list[int]:
    """Frame sizes whose mean rate is ``bitrate_mbit``: every ``gop``-th frame is an
    I frame ``i_ratio`` times larger than the others, each ±``jitter`` at random,
    as an encoder's output varies — a flat rate would hide burst effects."""
    n = max(1, round(fps * duration_s))
    rng = random.Random(seed)
    weights = [(i_ratio if i % gop == 0 else 1.0) * (1 + rng.uniform(-jitter, jitter))
               for i in range(n)]
    total_bytes = bitrate_mbit * 1e6 / 8 * n / fps
    scale = total_bytes / math.fsum(weights)
    return [max(HEADER_BYTES + 1, round(w * scale)) for w in weights]


@dataclass(frozen=True, slots=True)
class VideoScore:
    frames: int
    received: int
    on_time: int
    on_time_ratio: float
    stalls: int
    stall_time_s: float
    max_late_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def score(arrivals: Sequence[float | None], fps: float, startup_s: float,
          start: float = 0.0) -> VideoScore:
    """Score frame completion times (``None``: never arrived) against play-out.

    A frame that never arrives is late and, for the buffering player, ends the
    stream: the time from its due point to the last arrival counts as stall.
    """
    if fps <= 0 or startup_s < 0:
        raise ValueError("fps must be > 0 and startup_s >= 0")
    period = 1.0 / fps
    on_time = 0
    stalls = 0
    stall_time = 0.0
    max_late = 0.0
    play = start + startup_s  # the buffering player's clock for the next frame
    last = max((a for a in arrivals if a is not None), default=start)
    for i, arrival in enumerate(arrivals):
        deadline = start + startup_s + i * period
        if arrival is not None and arrival <= deadline:
            on_time += 1
        late = (last if arrival is None else arrival) - deadline
        max_late = max(max_late, late)
        got = last if arrival is None else arrival
        if got > play:
            stalls += 1
            stall_time += got - play
            play = got
        if arrival is None:
            break
        play += period
    n = len(arrivals)
    received = sum(a is not None for a in arrivals)
    return VideoScore(n, received, on_time, on_time / n if n else math.nan, stalls,
                      stall_time, max(0.0, max_late))
