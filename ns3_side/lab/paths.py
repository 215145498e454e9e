"""What a simulated path is: plain data shared by the controller and the simulation process.

Nothing here imports ns-3: the controller (which never imports ``ns``, 7 s)
builds these, and they reach the simulation process as JSON.

Kinds:

- ``p2p``: a point-to-point link (``rate_mbit``, ``delay_ms`` one way,
  ``loss`` packet ratio on receive, ``queue_packets`` at each sender).
- ``wifi``: 802.11a between a station (client side, moving) and an AP
  (server side) at a constant PHY rate ``wifi_mode``; the station starts
  ``start_m`` from the AP and moves away at ``speed_mps`` (``rate_mbit`` and
  ``delay_ms`` are not used: the PHY rate and the MAC set them). The station
  hears frames down to ``detect_dbm`` (-92; ``detect=default`` keeps ns-3's
  preamble detection, which goes deaf near -82 dBm).
- ``lte``: a **stand-in**. ns-3's LTE/EPC model (eNB, UE, PGW, S1-U tunnels,
  RLC/PDCP per bearer) costs far more CPU per packet than real time on two
  shared vCPUs can carry next to a WiFi path; what the handover experiment
  needs from "LTE" is a second, slower, longer path that stays up. So it
  is a point-to-point link with LTE-like defaults (10 Mbit/s, 25 ms one way,
  a deep queue, as a bufferbloated cellular bearer has).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KINDS", "PathConfig", "lost_for_good", "lte", "p2p", "wifi"]

KINDS = ("p2p", "wifi", "lte")
# Loss causes the simulation counts (``losses`` in its progress lines) that
# are packets gone for good; ``phy_*`` causes are frames the WiFi PHY missed,
# which the MAC may still have retransmitted (link-level attempts, not losses).
FOR_GOOD = ("queue", "error_model", "mac_retry_limit", "mac_expired", "mac_tx_drop", "mac_other")
# Ethernet header we carry across the simulated link (the relay keeps MACs)
ENCAP_BYTES = 14
TAP_MTU = 1500


@dataclass(slots=True)
class PathConfig:
    """One simulated path between the client's and the server's ``eth<i>``."""

    kind: str = "p2p"
    rate_mbit: float = 10.0
    delay_ms: float = 10.0
    loss: float = 0.0
    queue_packets: int | None = None  # None: max(BDP, 100 ms at the rate, 20)
    # wifi only
    wifi_mode: str = "OfdmRate12Mbps"
    start_m: float = 10.0
    speed_mps: float = 0.0
    tx_power_dbm: float = 16.0
    # preamble detection threshold: frames weaker than this are not heard at all.
    # ns-3's default ThresholdPreambleDetectionModel stops at about -82 dBm, so a
    # station goes deaf before a -80 dBm policy (filtered, late) can act; -92 is
    # what a real card hears. None: ns-3's default model as it is.
    detect_dbm: float | None = -92.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"path kind must be one of {KINDS}, got {self.kind!r}")
        if self.rate_mbit <= 0 or self.delay_ms < 0:
            raise ValueError("rate_mbit must be > 0 and delay_ms >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss is a ratio in [0, 1), got {self.loss}")
        if self.queue_packets is not None and self.queue_packets < 1:
            raise ValueError("queue_packets must be >= 1")

    @property
    def queue(self) -> int:
        """Device queue in packets: deliberate, so the bottleneck behaves like a router's."""
        if self.queue_packets is not None:
            return self.queue_packets
        pkt_bits = (TAP_MTU + ENCAP_BYTES) * 8
        bdp = self.rate_mbit * 1e6 * 2 * self.delay_ms / 1000 / pkt_bits
        hundred_ms = self.rate_mbit * 1e6 * 0.1 / pkt_bits
        return max(20, math.ceil(max(bdp, hundred_ms)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PathConfig:
        return cls(**data)

    @classmethod
    def parse(cls, text: str) -> PathConfig:
        """``KIND[:key=value,...]``, e.g. ``p2p:rate=5,delay=10,loss=0.01,queue=50``,
        ``wifi:start=30,speed=2,mode=OfdmRate12Mbps``, ``lte``."""
        kind, _, rest = text.partition(":")
        base = {"p2p": p2p, "wifi": wifi, "lte": lte}.get(kind)
        if base is None:
            raise ValueError(f"path kind must be one of {KINDS}, got {kind!r}")
        names = {"rate": "rate_mbit", "delay": "delay_ms", "loss": "loss",
                 "queue": "queue_packets"}
        if kind == "wifi":
            names = {"mode": "wifi_mode", "start": "start_m", "speed": "speed_mps",
                     "power": "tx_power_dbm", "queue": "queue_packets", "detect": "detect_dbm"}
        kw: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep or key not in names:
                raise ValueError(f"bad path option {item!r} (keys: {', '.join(names)})")
            name = names[key]
            try:
                kw[name] = value if name == "wifi_mode" else (
                    None if name == "detect_dbm" and value == "default" else
                    int(value) if name == "queue_packets" else float(value))
            except ValueError:
                raise ValueError(f"bad path option {item!r}: {key} wants a number") from None
        return base(**kw)


def p2p(rate_mbit: float = 10.0, delay_ms: float = 10.0, **kw: Any) -> PathConfig:
    return PathConfig("p2p", rate_mbit, delay_ms, **kw)


def lte(rate_mbit: float = 10.0, delay_ms: float = 25.0, **kw: Any) -> PathConfig:
    """The documented LTE stand-in (see the module docstring)."""
    kw.setdefault("queue_packets", max(50, math.ceil(rate_mbit * 1e6 * 0.25 / 12112)))
    return PathConfig("lte", rate_mbit, delay_ms, **kw)


def wifi(start_m: float = 10.0, speed_mps: float = 0.0, **kw: Any) -> PathConfig:
    """802.11a at 12 Mbit/s PHY rate (~8 Mbit/s of TCP); ``rate_mbit`` is nominal only."""
    kw.setdefault("rate_mbit", 12.0)
    kw.setdefault("delay_ms", 0.0)
    return PathConfig("wifi", start_m=start_m, speed_mps=speed_mps, **kw)


def lost_for_good(causes: dict[str, int]) -> int:
    """Packets a path lost end to end, from one side's (or a summed) ``{cause: n}``."""
    return sum(n for cause, n in causes.items() if cause in FOR_GOOD)
