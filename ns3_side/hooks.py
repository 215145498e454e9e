"""Trace hooks: ns-3 trace sources -> ``Report(sim_time, path_id, metrics, node_id)``.

Each helper wires one C++ emitter (see ``_cpp.py``) to a trace source and
gives it a Python closure that builds the Report and hands it to the gateway.
Common knobs, all applied in C++ before Python is entered:

- ``alpha``: low-pass filter, EWMA weight of the newest sample (1 = raw);
- ``min_interval_ms``: rate limit in sim time (at most one report per interval);
- ``period_ms``: sample-and-hold, one report of the filtered value per period
  instead of one per trace call (``fresh_only`` skips periods without samples).

``alpha`` is a weight *per sample*, and a WiFi PHY hears ~10 beacons/s when
idle but thousands of frames/s under load: the same alpha filters 100 times less
in time under load. ``wifi_signal(tau_ms=...)`` filters in time instead: each
sample gets weight ``1 - exp(-dt / tau)`` for the sim time ``dt`` since the
previous one, a first-order low pass whose time constant does not depend on
the traffic. ``stamp=True`` adds ``host_mono`` (this process's
CLOCK_MONOTONIC when the report was made) to every report, so the server
can time a reaction from the simulation's instant without estimating how
sim time maps to host time.

The metric names are the gateway's vocabulary: ``rssi_dbm``, ``snr_db``,
``link_up``, ``queue_drops``, ``loss``, ``packets``, ``cwnd_bytes``, ``rtt_ms``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from ipcgw.messages import Report
from ns3_side.simclient import SimClient

__all__ = [
    "Hook",
    "drops",
    "link_state",
    "loss",
    "lte_signal",
    "queue_drops",
    "tcp_cwnd",
    "tcp_rtt",
    "tcp_socket_path",
    "wifi_signal",
]

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
Metrics = Callable[[float, float], dict[str, Any]]


class Hook:
    """A live trace hook; ``samples`` seen and reports ``emitted`` so far."""

    def __init__(self, gateway: SimClient, emitter: Any, path_id: int, node_id: int,
                 metrics: Metrics, stamp: bool = False) -> None:
        self.gateway = gateway
        self.emitter = emitter
        self.path_id = path_id
        self.node_id = node_id
        emit = gateway.emit
        mono = time.monotonic

        def on_sample(t: float, a: float, b: float) -> None:
            m = metrics(a, b)
            if stamp:
                m["host_mono"] = mono()
            emit(Report(t, path_id, m, node_id))

        emitter.fn = gateway.guard(on_sample)
        gateway.own(emitter)

    @property
    def samples(self) -> int:
        return int(self.emitter.samples)

    @property
    def emitted(self) -> int:
        return int(self.emitter.emitted)

    @property
    def value(self) -> tuple[float, float] | None:
        """The current filtered (a, b), None before the first sample."""
        e = self.emitter
        return (float(e.a), float(e.b)) if e.have else None

    def stop(self) -> None:
        self.emitter.Stop()


def _configure(emitter: Any, alpha: float, min_interval_ms: float, period_ms: float,
               fresh_only: bool) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if min_interval_ms < 0 or period_ms < 0:
        raise ValueError("min_interval_ms and period_ms must be >= 0")
    emitter.alpha = alpha
    emitter.min_interval = min_interval_ms / 1000.0
    emitter.period = period_ms / 1000.0
    emitter.fresh_only = fresh_only
    if period_ms:
        emitter.StartPeriodic(period_ms / 1000.0)


def _node_id(obj: Any) -> int:
    try:
        return int(obj.GetNode().GetId())
    except Exception:  # not a device, or no node yet
        return 0


def _wifi_phy(ns: Any, obj: Any) -> tuple[Any, int]:
    """A WifiNetDevice (or a device aggregated with one) or a WifiPhy -> (phy, node id)."""
    dev = ns.DynamicCast[ns.WifiNetDevice](obj)
    if dev:
        return dev.GetPhy(), _node_id(dev)
    phy = ns.DynamicCast[ns.WifiPhy](obj)
    if phy:
        device = phy.GetDevice()
        return phy, _node_id(device) if device else 0
    raise TypeError(f"expected a WifiNetDevice or WifiPhy, got {obj!r}")


TAU_SOURCE = r"""
#include <cmath>
namespace ipcgw_hooks {
using namespace ns3;
// WifiSignal whose EWMA weight follows the time since the last kept sample.
struct WifiSignalTau : ipcgw_ns3::WifiSignal {
    double tau = 0.0;  // s
    double last = -1.0;
    void RxTau(Ptr<const Packet> p, uint16_t f, WifiTxVector v, MpduInfo m, SignalNoiseDbm sn,
               uint16_t s) {
        if (stopped) return;
        double now = Simulator::Now().GetSeconds();
        uint64_t before = samples;
        alpha = (last < 0.0 || tau <= 0.0) ? 1.0 : 1.0 - std::exp(-(now - last) / tau);
        Rx(p, f, v, m, sn, s);
        if (samples != before) last = now;
    }
    bool AttachTau(Ptr<WifiPhy> phy) {
        return phy->TraceConnectWithoutContext("MonitorSnifferRx",
                                               MakeCallback(&WifiSignalTau::RxTau, this));
    }
};
// An LTE UE's serving-cell RSRP (W per resource element -> dBm) and SINR (linear -> dB)
// from its PHY's ReportCurrentCellRsrpSinr; tau > 0 filters in sim time like WifiSignalTau.
struct LteSignal : ipcgw_ns3::Emitter {
    double tau = 0.0;  // s
    double last = -1.0;
    void Report(uint16_t, uint16_t, double rsrpW, double sinr, uint8_t) {
        if (stopped || rsrpW <= 0.0 || sinr <= 0.0) return;
        double now = Simulator::Now().GetSeconds();
        if (tau > 0.0) alpha = last < 0.0 ? 1.0 : 1.0 - std::exp(-(now - last) / tau);
        last = now;
        Offer(10.0 * std::log10(rsrpW) + 30.0, 10.0 * std::log10(sinr));
    }
    bool Attach(Ptr<LteUePhy> phy) {
        return phy->TraceConnectWithoutContext("ReportCurrentCellRsrpSinr",
                                               MakeCallback(&LteSignal::Report, this));
    }
};
}  // namespace ipcgw_hooks
"""


def _hooks() -> Any:
    import cppyy

    if not hasattr(cppyy.gbl, "ipcgw_hooks"):
        cppyy.cppdef(TAU_SOURCE)
    return cppyy.gbl.ipcgw_hooks


def _tau_signal() -> Any:
    return _hooks().WifiSignalTau()


def wifi_signal(gw: SimClient, device: Any, path_id: int, *, node_id: int | None = None,
                alpha: float = 1.0, min_interval_ms: float = 0.0, period_ms: float = 0.0,
                fresh_only: bool = True, from_address: Any = None, tau_ms: float = 0.0,
                stamp: bool = False) -> Hook:
    """RSSI and SNR of every frame the WiFi PHY hears (``MonitorSnifferRx``):
    metrics ``rssi_dbm`` and ``snr_db``. ``from_address`` keeps only frames sent by
    that MAC (the AP's ``GetAddress()`` or "00:00:00:00:00:02"), as a station also
    hears other stations. ``tau_ms`` > 0 filters with that time constant (sim
    time) instead of ``alpha`` per frame; see the module docstring."""
    if tau_ms < 0:
        raise ValueError(f"tau_ms must be >= 0, got {tau_ms}")
    phy, nid = _wifi_phy(gw.ns, device)
    emitter = _tau_signal() if tau_ms > 0 else gw.cpp.WifiSignal()
    if isinstance(from_address, str):
        if not _MAC.fullmatch(from_address):  # ns-3 aborts the process on a bad one
            raise ValueError(f"from_address must look like 00:00:00:00:00:01: {from_address!r}")
        emitter.FilterFromText(from_address)
    elif from_address is not None:
        emitter.FilterFrom(from_address)
    if not (emitter.AttachTau(phy) if tau_ms > 0 else emitter.Attach(phy)):
        raise ValueError("MonitorSnifferRx not found on the WiFi PHY")
    hook = Hook(gw, emitter, path_id, nid if node_id is None else node_id,
                lambda a, b: {"rssi_dbm": a, "snr_db": b}, stamp)
    _configure(emitter, 1.0 if tau_ms > 0 else alpha, min_interval_ms, period_ms, fresh_only)
    if tau_ms > 0:
        emitter.tau = tau_ms / 1000.0
    return hook


def lte_signal(gw: SimClient, device: Any, path_id: int, *, node_id: int | None = None,
               alpha: float = 1.0, tau_ms: float = 0.0, min_interval_ms: float = 0.0,
               period_ms: float = 0.0, fresh_only: bool = True, stamp: bool = False) -> Hook:
    """An LTE UE's serving-cell RSRP and SINR (``LteUePhy`` ``ReportCurrentCellRsrpSinr``,
    every ``ns3::LteUePhy::RsrpSinrSamplePeriod`` TTIs): metrics ``rsrp_dbm`` and
    ``sinr_db``, filtered like :func:`wifi_signal` (``alpha`` per sample or ``tau_ms``)."""
    if tau_ms < 0:
        raise ValueError(f"tau_ms must be >= 0, got {tau_ms}")
    ns = gw.ns
    ue = ns.DynamicCast[ns.LteUeNetDevice](device)
    if not ue:
        raise TypeError(f"expected an LteUeNetDevice, got {device!r}")
    emitter = _hooks().LteSignal()
    if not emitter.Attach(ue.GetPhy()):
        raise ValueError("ReportCurrentCellRsrpSinr not found on the UE PHY")
    hook = Hook(gw, emitter, path_id, _node_id(ue) if node_id is None else node_id,
                lambda a, b: {"rsrp_dbm": a, "sinr_db": b}, stamp)
    _configure(emitter, 1.0 if tau_ms > 0 else alpha, min_interval_ms, period_ms, fresh_only)
    emitter.tau = tau_ms / 1000.0
    return hook


def link_state(gw: SimClient, device: Any, path_id: int, *, node_id: int | None = None,
               report_now: bool = True, stamp: bool = False) -> Hook:
    """``link_up`` (bool) whenever the device's link changes (WiFi (de)association,
    carrier); ``report_now`` also reports the state at attach time."""
    emitter = gw.cpp.LinkState()
    hook = Hook(gw, emitter, path_id, _node_id(device) if node_id is None else node_id,
                lambda a, b: {"link_up": a >= 0.5}, stamp)
    emitter.Attach(device)
    if report_now:
        gw.schedule(0.0, emitter.Now)
    return hook


def drops(gw: SimClient, source: Any, path_id: int, *, trace: str = "Drop",
          metric: str = "queue_drops", items: bool = False, node_id: int = 0,
          min_interval_ms: float = 0.0, period_ms: float = 0.0) -> Hook:
    """Running count of packets on a drop trace of any object: a ``Queue<Packet>``
    (``Drop``), a device (``MacTxDrop``, ``PhyRxDrop``), or with ``items=True`` a
    QueueDisc (``Drop``, whose trace carries QueueDiscItems)."""
    emitter = gw.cpp.PacketCount()
    attach = emitter.AttachItems if items else emitter.AttachPackets
    if not attach(source, trace):
        raise ValueError(f"trace source {trace!r} not found on {source!r}")
    hook = Hook(gw, emitter, path_id, node_id, lambda a, b: {metric: int(a)})
    _configure(emitter, 1.0, min_interval_ms, period_ms, True)
    return hook


def queue_drops(gw: SimClient, device: Any, path_id: int, *, node_id: int | None = None,
                min_interval_ms: float = 0.0, period_ms: float = 0.0) -> Hook:
    """``queue_drops``: packets dropped on their way out of a point-to-point or CSMA
    device, counted at the device queue *and* at the root queue disc above it
    (``Ipv4AddressHelper.Assign`` installs one, and it is where most drops happen)."""
    ns = gw.ns
    for cls in (ns.PointToPointNetDevice, ns.CsmaNetDevice):
        dev = ns.DynamicCast[cls](device)
        if dev:
            break
    else:
        raise TypeError(f"expected a PointToPointNetDevice or CsmaNetDevice, got {device!r}")
    emitter = gw.cpp.PacketCount()
    if not emitter.AttachPackets(dev.GetQueue(), "Drop"):
        raise ValueError("the device queue has no Drop trace")
    tc = dev.GetNode().GetObject[ns.TrafficControlLayer]()
    qdisc = tc.GetRootQueueDiscOnDevice(dev) if tc else None
    if qdisc:
        emitter.AttachItems(qdisc, "Drop")
    hook = Hook(gw, emitter, path_id, _node_id(dev) if node_id is None else node_id,
                lambda a, b: {"queue_drops": int(a)})
    _configure(emitter, 1.0, min_interval_ms, period_ms, True)
    return hook


def loss(gw: SimClient, device: Any, path_id: int, *, period_ms: float = 100.0,
         rx_trace: str = "PhyRxEnd", lost_trace: str = "PhyRxDrop", alpha: float = 1.0,
         node_id: int | None = None) -> Hook:
    """Packet loss ratio seen by a receiving device per ``period_ms``: metrics ``loss``
    (0..1, filtered) and ``packets`` (in the period). A period without packets
    reports nothing."""
    if period_ms <= 0:
        raise ValueError("loss needs period_ms > 0")
    emitter = gw.cpp.LossMeter()
    if not emitter.Attach(device, rx_trace, lost_trace):
        raise ValueError(f"{rx_trace!r} / {lost_trace!r} not found on {device!r}")
    hook = Hook(gw, emitter, path_id, _node_id(device) if node_id is None else node_id,
                lambda a, b: {"loss": a, "packets": int(b)})
    _configure(emitter, alpha, 0.0, period_ms, True)
    return hook


def tcp_socket_path(node_id: int, index: int = 0) -> str:
    """Config path of a node's TCP socket, for sockets that applications create later."""
    return f"/NodeList/{node_id}/$ns3::TcpL4Protocol/SocketList/{index}"


def _tcp_hook(gw: SimClient, emitter: Any, socket: Any, trace: str, at: float | None,
              path_id: int, node_id: int | None, metrics: Metrics, alpha: float,
              min_interval_ms: float, period_ms: float) -> Hook:
    if node_id is None:  # a Config path names its node; a socket knows it
        match = re.match(r"/NodeList/(\d+)/", socket) if isinstance(socket, str) else None
        node_id = int(match.group(1)) if match else _node_id(socket)
    hook = Hook(gw, emitter, path_id, node_id, metrics)
    _configure(emitter, alpha, min_interval_ms, period_ms, True)
    if isinstance(socket, str):
        path = f"{socket}/{trace}"

        def connect() -> None:
            if not emitter.AttachPath(path):
                raise ValueError(f"no trace source at {path} (socket not created yet?)")

        if at is None:
            connect()
        else:
            gw.schedule(at, connect)
    elif not (emitter.Attach(socket) if trace == "CongestionWindow"
              else emitter.Attach(socket, trace)):
        raise ValueError(f"trace source {trace!r} not found on {socket!r}")
    return hook


def tcp_cwnd(gw: SimClient, socket: Any, path_id: int, *, at: float | None = None,
             node_id: int | None = None, alpha: float = 1.0, min_interval_ms: float = 0.0,
             period_ms: float = 0.0) -> Hook:
    """``cwnd_bytes`` of a TcpSocketBase, or of the socket at a Config path (see
    :func:`tcp_socket_path`) connected at sim time ``at`` once the app created it."""
    return _tcp_hook(gw, gw.cpp.TcpCwnd(), socket, "CongestionWindow", at, path_id, node_id,
                     lambda a, b: {"cwnd_bytes": int(a)}, alpha, min_interval_ms, period_ms)


def tcp_rtt(gw: SimClient, socket: Any, path_id: int, *, at: float | None = None,
            trace: str = "RTT", node_id: int | None = None, alpha: float = 1.0,
            min_interval_ms: float = 0.0, period_ms: float = 0.0) -> Hook:
    """``rtt_ms`` from TcpSocketBase ``RTT`` (smoothed) or ``LastRTT`` (last sample)."""
    return _tcp_hook(gw, gw.cpp.TcpRtt(), socket, trace, at, path_id, node_id,
                     lambda a, b: {"rtt_ms": a}, alpha, min_interval_ms, period_ms)
