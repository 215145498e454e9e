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
  preamble detection, which goes deaf near -82 dBm). ``mobility`` (bounce,
  waypoints, random walk) and ``rate_manager`` (Minstrel, Ideal, ...) replace
  the straight line and the constant rate; see DATAPLANE.md "Options".

Any kind: ``extra`` sets ns-3 attributes of the path's objects
(``{"phy.RxNoiseFigure": "9"}``, :data:`ATTRIBUTE_OF`); ns-3 checks them when
the simulation builds the path (:mod:`ns3_side.lab.options`).
- ``cell``: a cellular **stand-in**: a point-to-point link with LTE-like
  defaults (10 Mbit/s, 25 ms one way, a deep queue, as a bufferbloated
  cellular bearer has). What the handover experiment needs from "LTE" is a
  second, slower, longer path that stays up, at p2p's CPU cost; it was
  called ``lte`` before the real model existed.
- ``lte``: ns-3's LTE/EPC model (LENA: eNB, UE, SGW/PGW, S1-U/S5 tunnels,
  RLC AM per bearer; :mod:`ns3_side.lab.lte`). The model decides the rate
  (``lte_rb`` resource blocks, the UE starts ``lte_distance_m`` from the eNB
  and moves away at ``speed_mps``; with a gateway it reports ``rsrp_dbm`` /
  ``sinr_db`` like WiFi's RSSI, ``ns3_side.lte_signal``);
  ``delay_ms`` is the PGW-remote host (SGi) link's one-way delay and
  ``queue_packets`` its queue and the RLC buffer. It is L3: the client's
  ``eth<i>`` has the UE's EPC address :data:`LTE_UE_ADDR`, so at most one
  lte path per simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["KINDS", "LTE_GATEWAY", "LTE_UE_ADDR", "PathConfig", "cell", "is_ns3_default",
           "lost_for_good", "lte", "p2p", "wifi"]

KINDS = ("p2p", "wifi", "cell", "lte")
# the EPC gives its first UE 7.0.0.2 and its PGW 7.0.0.1: the client namespace
# uses them on an lte path (the PGW finds a downlink packet's UE by this address)
LTE_UE_ADDR = "7.0.0.2"
LTE_GATEWAY = "7.0.0.1"
# LTE channel bandwidths ns-3 accepts, in resource blocks (1.4 ... 20 MHz)
LTE_RBS = (6, 15, 25, 50, 75, 100)
# Loss causes the simulation counts (``losses`` in its progress lines) that
# are packets gone for good; ``phy_*`` causes are frames the WiFi PHY missed,
# which the MAC may still have retransmitted (link-level attempts, not losses).
FOR_GOOD = ("queue", "error_model", "mac_retry_limit", "mac_expired", "mac_tx_drop", "mac_other",
            "rlc_ul_buffer", "rlc_dl_buffer", "ue_nas_refused", "tap_write")
# wifi station movement: ``line`` (from start_m away at speed_mps), ``bounce``
# (start_m <-> end_m at speed_mps), ``waypoints`` (ns-3 WaypointMobilityModel),
# ``random_walk`` (RandomWalk2d at speed_mps in an end_m square beside the AP)
MOBILITIES = ("line", "bounce", "waypoints", "random_walk")
# rate adaptation by name -> ns-3 WifiRemoteStationManager; constant uses wifi_mode
RATE_MANAGERS = {"constant": "ns3::ConstantRateWifiManager", "ideal": "ns3::IdealWifiManager",
                 "minstrel": "ns3::MinstrelWifiManager",
                 "minstrel_ht": "ns3::MinstrelHtWifiManager", "aarf": "ns3::AarfWifiManager"}
# which of a path's ns-3 objects ``extra`` ("OBJECT.Attribute") may set; both ends'
# unless the name says sta_/ap_ (ns3_side/lab/options.py finds them)
ATTRIBUTE_OF = {
    "p2p": ("device", "channel", "queue", "error_model"),
    "cell": ("device", "channel", "queue", "error_model"),
    "wifi": ("device", "phy", "sta_phy", "ap_phy", "mac", "sta_mac", "ap_mac", "manager",
             "queue", "mobility"),
    "lte": (),
}
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
    # lte only: eNB-UE distance (m) and channel bandwidth (resource blocks)
    lte_distance_m: float = 100.0
    lte_rb: int = 25
    # wifi: how the station moves (MOBILITIES) and picks its PHY rate (RATE_MANAGERS)
    mobility: str = "line"
    end_m: float = 60.0  # bounce: the far turning point; random_walk: the box's size
    waypoints: list[list[float]] = field(default_factory=list)  # [[t_s, x_m, y_m], ...]
    rate_manager: str = "constant"
    # any ns-3 attribute of this path's objects: {"phy.RxNoiseFigure": "9"}, see ATTRIBUTE_OF
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
        if self.lte_rb not in LTE_RBS or self.lte_distance_m <= 0:
            raise ValueError(f"lte_rb must be one of {LTE_RBS} and lte_distance_m > 0")
        _check_options(self)

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
        ``wifi:start=30,speed=2,mode=OfdmRate12Mbps``, ``cell``, ``lte:distance=500,rb=15``."""
        kind, _, rest = text.partition(":")
        makers: dict[str, Callable[..., PathConfig]] = {"p2p": p2p, "wifi": wifi, "cell": cell,
                                                       "lte": lte}
        base = makers.get(kind)
        if base is None:
            raise ValueError(f"path kind must be one of {KINDS}, got {kind!r}")
        return base(**_options(kind, rest))

    def with_options(self, text: str) -> PathConfig:
        """This path with ``key=value,...`` (the same keys as :meth:`parse`) changed;
        ns-3 attributes are added to :attr:`extra`."""
        kw = _options(self.kind, text)
        extra = {**self.extra, **kw.pop("extra")}
        return replace(self, **kw, extra=extra)


def _options(kind: str, rest: str) -> dict[str, Any]:
    """``key=value,...`` of a ``kind`` path as PathConfig keywords (``extra`` always)."""
    names = {"rate": "rate_mbit", "delay": "delay_ms", "loss": "loss",
             "queue": "queue_packets"}
    if kind == "wifi":
        names = {"mode": "wifi_mode", "start": "start_m", "speed": "speed_mps",
                 "power": "tx_power_dbm", "queue": "queue_packets", "detect": "detect_dbm",
                 "mobility": "mobility", "end": "end_m", "way": "waypoints",
                 "rate_manager": "rate_manager"}
    elif kind == "lte":  # the rate is the model's
        names = {"distance": "lte_distance_m", "rb": "lte_rb", "delay": "delay_ms",
                 "queue": "queue_packets", "speed": "speed_mps"}
    kw: dict[str, Any] = {"extra": {}}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if sep and "." in key:  # an ns-3 attribute, checked by __post_init__ and the sim
            kw["extra"][key] = value
            continue
        if not sep or key not in names:
            raise ValueError(f"bad path option {item!r} (keys: {', '.join(names)}, "
                             "or OBJECT.Attribute for an ns-3 attribute)")
        name = names[key]
        try:
            kw[name] = value if name in ("wifi_mode", "mobility", "rate_manager") else (
                _waypoints(value) if name == "waypoints" else (
                None if name == "detect_dbm" and value == "default" else
                int(value) if name in ("queue_packets", "lte_rb") else float(value)))
        except ValueError:
            wants = "T/X/Y;T/X/Y (s, m, m)" if name == "waypoints" else "a number"
            raise ValueError(f"bad path option {item!r}: {key} wants {wants}") from None
    return kw


def is_ns3_default(name: str) -> bool:
    """``ns3::Type::Attribute``, the shape ``Config::SetDefault`` takes (ns-3 checks the
    rest when the simulation starts)."""
    return name.startswith("ns3::") and name.count("::") >= 2


def _waypoints(text: str) -> list[list[float]]:
    """``T/X/Y;T/X/Y;...`` (seconds, metres) as the CLI writes waypoints."""
    out = []
    for point in filter(None, text.split(";")):
        parts = point.split("/")
        if len(parts) != 3:
            raise ValueError(f"a waypoint is T/X/Y, got {point!r}")
        out.append([float(v) for v in parts])
    return out


def _check_options(pc: PathConfig) -> None:
    """Everything about mobility, rate manager and attributes that needs no ns-3."""
    if pc.mobility not in MOBILITIES:
        raise ValueError(f"mobility must be one of {MOBILITIES}, got {pc.mobility!r}")
    if pc.rate_manager not in RATE_MANAGERS:
        raise ValueError(f"rate_manager must be one of {tuple(RATE_MANAGERS)}, "
                         f"got {pc.rate_manager!r}")
    if pc.kind != "wifi" and (pc.mobility, pc.rate_manager, pc.waypoints) != (
            "line", "constant", []):
        raise ValueError(f"mobility, waypoints and rate_manager are wifi options, not {pc.kind}")
    if pc.mobility == "waypoints":
        times = [w[0] for w in pc.waypoints]
        if not pc.waypoints or any(len(w) != 3 for w in pc.waypoints) or times != sorted(
                set(times)) or times[0] < 0:
            raise ValueError("mobility=waypoints needs waypoints [[t_s, x_m, y_m], ...] with "
                             "distinct times >= 0 in order (CLI: way=0/10/0;5/40/0)")
    elif pc.waypoints:
        raise ValueError("waypoints are used only with mobility=waypoints")
    if pc.mobility in ("bounce", "random_walk") and (pc.speed_mps <= 0 or pc.end_m <= 0 or (
            pc.mobility == "bounce" and pc.end_m == pc.start_m)):
        raise ValueError(f"mobility={pc.mobility} needs speed_mps > 0 and end_m > 0"
                         + (" (and end_m != start_m)" if pc.mobility == "bounce" else ""))
    objects = ATTRIBUTE_OF[pc.kind]
    if pc.extra and not objects:
        raise ValueError(f"a {pc.kind} path takes no per-object ns-3 attributes (its objects "
                         "are built in C++): set defaults instead, e.g. --ns3-default "
                         "ns3::LteEnbPhy::TxPower=40")
    for key in pc.extra:
        obj, dot, attr = str(key).partition(".")
        if not dot or obj not in objects or not attr.isidentifier():
            raise ValueError(f"ns-3 attribute {key!r} of a {pc.kind} path: write OBJECT.Attribute "
                             f"with OBJECT one of {', '.join(objects)}")


def p2p(rate_mbit: float = 10.0, delay_ms: float = 10.0, **kw: Any) -> PathConfig:
    return PathConfig("p2p", rate_mbit, delay_ms, **kw)


def cell(rate_mbit: float = 10.0, delay_ms: float = 25.0, **kw: Any) -> PathConfig:
    """The cellular stand-in, a p2p link (see the module docstring): what ``lte()`` was."""
    kw.setdefault("queue_packets", max(50, math.ceil(rate_mbit * 1e6 * 0.25 / 12112)))
    return PathConfig("cell", rate_mbit, delay_ms, **kw)


def lte(distance_m: float | None = None, rb: int | None = None, delay_ms: float = 10.0,
        **kw: Any) -> PathConfig:
    """ns-3's LTE/EPC (see the module docstring): UE ``distance_m`` from the eNB (100),
    ``rb`` resource blocks (25 = 5 MHz). ``rate_mbit`` is nominal: it only sizes the
    default queue (SGi link and RLC buffer), as 250 ms at that rate."""
    if distance_m is not None:
        kw["lte_distance_m"] = distance_m
    if rb is not None:
        kw["lte_rb"] = rb
    kw.setdefault("rate_mbit", 10.0)
    kw.setdefault("queue_packets", max(50, math.ceil(kw["rate_mbit"] * 1e6 * 0.25 / 12112)))
    return PathConfig("lte", delay_ms=delay_ms, **kw)


def wifi(start_m: float = 10.0, speed_mps: float = 0.0, **kw: Any) -> PathConfig:
    """802.11a at 12 Mbit/s PHY rate (~8 Mbit/s of TCP); ``rate_mbit`` is nominal only."""
    kw.setdefault("rate_mbit", 12.0)
    kw.setdefault("delay_ms", 0.0)
    return PathConfig("wifi", start_m=start_m, speed_mps=speed_mps, **kw)


def lost_for_good(causes: dict[str, int]) -> int:
    """Packets a path lost end to end, from one side's (or a summed) ``{cause: n}``."""
    return sum(n for cause, n in causes.items() if cause in FOR_GOOD)
