"""The simulation process of the data plane: ``python -m ns3_side.lab.simproc CONFIG.json``.

Started by :class:`ns3_side.lab.dataplane.DataPlane`, which owns the namespaces
and the TAP fds (inherited here) and watches this process: it is a separate
process because ns-3 may hang instead of exiting after a fatal error, and
only another process can then kill it and clean up.

Topology, per path ``i``: a client ghost node whose ``FdNetDevice`` sits on
the client namespace's ``eth<i>`` TAP, and a server ghost node on the
server's, joined by the path's link (point-to-point, or WiFi station -> AP).
The ghost nodes have no IP stack: a small C++ relay carries whole Ethernet
frames across the link (header inside the payload, as the link devices
cannot "send from" another MAC), so the kernels see one Ethernet segment per
path, ARP included, and ns-3 never parses IP. The link's device queue is the
path's bottleneck queue. An ``lte`` path is L3 (UE, eNB, EPC, an IP relay per
side) and is built by :mod:`ns3_side.lab.lte` instead.

Output (stdout, one JSON object per line): ``{"type": "ready", ...}`` once
built, ``{"type": "progress", "sim", "wall", "lag", "rssi", ...}`` every
``progress_s`` of sim time, ``{"type": "done"}`` at the end. Errors go to
stderr (ns-3's own ``NS_FATAL_ERROR`` text included), exit status non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from ns3_side.lab.options import apply_defaults, install_mobility, rate_manager, set_attributes
from ns3_side.lab.paths import ENCAP_BYTES, TAP_MTU, PathConfig

RELAY_SOURCE = r"""
namespace ipcgw_dp {
using namespace ns3;

// One side of a path: frames from the TAP (FdNetDevice, promiscuous) go out
// on the link device wrapped in their Ethernet header; frames from the link
// are unwrapped and written to the TAP with their original MACs (SendFrom).
struct Relay {
    Ptr<NetDevice> fd;
    Ptr<NetDevice> link;
    Address peer;              // link-layer destination on the link
    uint16_t carrier = 0x0800; // the only protocol a PPP link accepts
    uint64_t to_link = 0, to_fd = 0, link_refused = 0, fd_refused = 0;

    bool FromFd(Ptr<NetDevice>, Ptr<const Packet> p, uint16_t proto, const Address& from,
                const Address& to, NetDevice::PacketType) {
        Ptr<Packet> q = p->Copy();
        EthernetHeader eth(false);
        eth.SetSource(Mac48Address::ConvertFrom(from));
        eth.SetDestination(Mac48Address::ConvertFrom(to));
        eth.SetLengthType(proto);
        q->AddHeader(eth);
        if (link->Send(q, peer, carrier)) ++to_link; else ++link_refused;
        return true;
    }
    bool FromLink(Ptr<NetDevice>, Ptr<const Packet> p, uint16_t, const Address&) {
        Ptr<Packet> q = p->Copy();
        EthernetHeader eth(false);
        if (q->RemoveHeader(eth) == 0) { ++fd_refused; return true; }
        if (fd->SendFrom(q, eth.GetSource(), eth.GetDestination(), eth.GetLengthType())) ++to_fd;
        else ++fd_refused;
        return true;
    }
    bool Ignore(Ptr<NetDevice>, Ptr<const Packet>, uint16_t, const Address&) { return true; }
    void Attach() {
        fd->SetPromiscReceiveCallback(MakeCallback(&Relay::FromFd, this));
        fd->SetReceiveCallback(MakeCallback(&Relay::Ignore, this));
        link->SetReceiveCallback(MakeCallback(&Relay::FromLink, this));
    }
};

// Losses where they happen, per cause: a name -> count map, read as "name=n;...".
// queue / error_model / mac_* are packets the path lost for good; phy_* are
// frames the PHY failed to receive (WifiPhyRxfailureReason's own text, or a
// payload it could not decode), which the MAC may still retransmit.
struct LossCount {
    std::map<std::string, uint64_t> n;
    void Add(const std::string& why) { ++n[why]; }
    void Queue(Ptr<const Packet>) { Add("queue"); }
    void ErrorModel(Ptr<const Packet>) { Add("error_model"); }
    void PhyDrop(Ptr<const Packet>, WifiPhyRxfailureReason r) {
        std::ostringstream os; os << r; Add("phy_" + os.str());
    }
    void PhyError(Ptr<const Packet>, double) { Add("phy_rx_error"); }
    void MacDrop(WifiMacDropReason r, Ptr<const WifiMpdu>) {
        switch (r) {
            case WIFI_MAC_DROP_FAILED_ENQUEUE: Add("queue"); break;
            case WIFI_MAC_DROP_EXPIRED_LIFETIME: Add("mac_expired"); break;
            case WIFI_MAC_DROP_REACHED_RETRY_LIMIT: Add("mac_retry_limit"); break;
            default: Add("mac_other");
        }
    }
    void MacTxDrop(Ptr<const Packet>) { Add("mac_tx_drop"); }
    bool AttachQueue(Ptr<Object> q) {
        return q->TraceConnectWithoutContext("Drop", MakeCallback(&LossCount::Queue, this));
    }
    bool AttachP2p(Ptr<PointToPointNetDevice> d) {
        return d->TraceConnectWithoutContext("PhyRxDrop", MakeCallback(&LossCount::ErrorModel, this));
    }
    bool AttachWifi(Ptr<WifiNetDevice> d) {
        bool ok = d->GetPhy()->TraceConnectWithoutContext(
            "PhyRxDrop", MakeCallback(&LossCount::PhyDrop, this));
        ok = d->GetPhy()->GetState()->TraceConnectWithoutContext(
            "RxError", MakeCallback(&LossCount::PhyError, this)) && ok;
        ok = d->GetMac()->TraceConnectWithoutContext(
            "DroppedMpdu", MakeCallback(&LossCount::MacDrop, this)) && ok;
        ok = d->GetMac()->TraceConnectWithoutContext(
            "MacTxDrop", MakeCallback(&LossCount::MacTxDrop, this)) && ok;
        return ok;
    }
    std::string Dump() const {
        std::ostringstream os;
        for (auto& [k, v] : n) os << k << "=" << v << ";";
        return os.str();
    }
};

inline double Distance(Ptr<MobilityModel> a, Ptr<MobilityModel> b) {
    return a->GetDistanceFrom(b);
}
}  // namespace ipcgw_dp
"""


def _emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


class Sim:
    """Builds the topology from the config; the objects ns-3 calls into are kept here."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from ns3_side._cpp import load

        ns, cpp = load()
        import cppyy

        if not hasattr(cppyy.gbl, "ipcgw_dp"):
            cppyy.cppdef(RELAY_SOURCE)
        self.ns, self.cpp, self.dp = ns, cpp, cppyy.gbl.ipcgw_dp
        self.cfg = cfg
        self.keep: list[Any] = []
        self.relays: list[tuple[Any, Any]] = []
        self.drops: list[list[Any]] = []
        self.wifi: dict[int, dict[str, Any]] = {}  # path id -> sta/ap devices, mobility, rssi
        self.lte: dict[int, Any] = {}  # path id -> ipcgw_lte::LteLink (station 1 only, at most 1)
        ns.GlobalValue.Bind("SimulatorImplementationType",
                            ns.StringValue("ns3::RealtimeSimulatorImpl"))
        ns.GlobalValue.Bind("ChecksumEnabled", ns.BooleanValue(True))
        hard = float(cfg.get("hard_limit_ms") or 0)
        if hard > 0:
            ns.Config.SetDefault("ns3::RealtimeSimulatorImpl::SynchronizationMode",
                                 ns.StringValue("HardLimit"))
            ns.Config.SetDefault("ns3::RealtimeSimulatorImpl::HardLimit",
                                 ns.TimeValue(ns.MilliSeconds(hard)))
        ns.RngSeedManager.SetSeed(int(cfg.get("seed", 1)))
        apply_defaults(ns, cfg.get("ns3_defaults") or {})  # before anything is created
        # station 1 is cfg's paths/fds; more stations (cfg["stations"]) get their own
        # ghost nodes, links and channels (one BSS each: stations do not contend)
        self.stations: list[tuple[list[Any], list[Any], dict[int, dict[str, Any]]]] = []
        every = [{"paths": cfg["paths"], "fds": cfg["fds"]}, *(cfg.get("stations") or [])]
        for st in every:
            self.relays, self.drops, self.wifi = [], [], {}
            for i, (pc, fds) in enumerate(zip(st["paths"], st["fds"], strict=True), start=1):
                self._path(i, PathConfig.from_json(pc), fds)
            self.stations.append((self.relays, self.drops, self.wifi))
        self.relays, self.drops, self.wifi = self.stations[0]

    def _fd_device(self, node: Any, fd: int) -> Any:
        ns = self.ns
        helper = ns.FdNetDeviceHelper()
        dev = helper.Install(node).Get(0)
        fdd = ns.DynamicCast[ns.FdNetDevice](dev)
        fdd.SetFileDescriptor(fd)
        fdd.SetAddress(ns.Mac48Address.Allocate().ConvertTo())
        fdd.SetMtu(TAP_MTU)  # TAP MTU <= this, or larger frames vanish
        return fdd

    def _relay(self, fd_dev: Any, link_dev: Any, peer: Any) -> Any:
        relay = self.dp.Relay()
        relay.fd = fd_dev
        relay.link = link_dev
        relay.peer = peer
        relay.Attach()
        self.keep.append(relay)
        return relay

    def _loss_counter(self) -> Any:
        counter = self.dp.LossCount()
        self.keep.append(counter)
        return counter

    def _path(self, i: int, pc: PathConfig, fds: list[int]) -> None:
        ns = self.ns
        nodes = ns.NodeContainer()
        nodes.Create(2)
        cli, srv = nodes.Get(0), nodes.Get(1)
        cfd, sfd = self._fd_device(cli, fds[0]), self._fd_device(srv, fds[1])
        if pc.kind == "lte":  # L3: its own relays and topology (ns3_side.lab.lte)
            from ns3_side.lab import lte

            if self.lte or self.stations:
                raise ValueError("one lte path per simulation, in station 1")
            crelay, srelay, pair, link = lte.build(self, i, pc, cli, srv, cfd, sfd)
            self.lte[i] = link
            self.drops.append(pair)
            cdev, sdev = link.ueDev, link.rhDev
        elif pc.kind in ("p2p", "cell"):
            p2p = ns.PointToPointHelper()
            p2p.SetDeviceAttribute("DataRate", ns.StringValue(f"{pc.rate_mbit * 1e6:.0f}bps"))
            p2p.SetDeviceAttribute("Mtu", ns.UintegerValue(TAP_MTU + ENCAP_BYTES))
            p2p.SetChannelAttribute("Delay", ns.StringValue(f"{pc.delay_ms}ms"))
            p2p.SetQueue("ns3::DropTailQueue<Packet>",
                         "MaxSize", ns.QueueSizeValue(ns.QueueSize(f"{pc.queue}p")))
            devs = p2p.Install(cli, srv)
            cdev, sdev = devs.Get(0), devs.Get(1)
            models = []
            if pc.loss > 0:
                for dev in (cdev, sdev):
                    model = ns.CreateObject[ns.RateErrorModel]()
                    model.SetUnit(ns.RateErrorModel.ERROR_UNIT_PACKET)
                    model.SetRate(pc.loss)
                    dev.SetAttribute("ReceiveErrorModel", ns.PointerValue(model))
                    models.append(model)
                    self.keep.append(model)
            ends = [ns.DynamicCast[ns.PointToPointNetDevice](d) for d in (cdev, sdev)]
            set_attributes(ns, f"path {i}", {
                "device": ends, "channel": [cdev.GetChannel()],
                "queue": [d.GetQueue() for d in ends], "error_model": models}, pc.extra)
            bcast = ns.Mac48Address.GetBroadcast().ConvertTo()
            crelay = self._relay(cfd, cdev, bcast)
            srelay = self._relay(sfd, sdev, bcast)
            pair = []
            for d in (cdev, sdev):
                counter = self._loss_counter()
                p2pdev = ns.DynamicCast[ns.PointToPointNetDevice](d)
                counter.AttachQueue(p2pdev.GetQueue())
                counter.AttachP2p(p2pdev)
                pair.append(counter)
            self.drops.append(pair)
        else:
            cdev, sdev, crelay, srelay = self._wifi(i, pc, cli, srv, cfd, sfd)
            pair = []
            for d in (cdev, sdev):
                counter = self._loss_counter()
                if not counter.AttachWifi(ns.DynamicCast[ns.WifiNetDevice](d)):
                    raise RuntimeError(f"path {i}: a WiFi loss trace source is missing")
                pair.append(counter)
            self.drops.append(pair)
        self.relays.append((crelay, srelay))
        self.keep += [nodes, cfd, sfd, cdev, sdev]

    def _wifi(self, i: int, pc: PathConfig, cli: Any, srv: Any, cfd: Any,
              sfd: Any) -> tuple[Any, Any, Any, Any]:
        """Station on the client ghost (moving), AP on the server ghost (fixed)."""
        ns = self.ns
        wifi = ns.WifiHelper()
        wifi.SetStandard(ns.WIFI_STANDARD_80211a)
        rate_manager(ns, wifi, pc)
        phy = ns.YansWifiPhyHelper()
        phy.SetChannel(ns.YansWifiChannelHelper.Default().Create())
        phy.Set("TxPowerStart", ns.DoubleValue(pc.tx_power_dbm))
        phy.Set("TxPowerEnd", ns.DoubleValue(pc.tx_power_dbm))
        # ns-3's default preamble detection hears nothing below about -82 dBm: the
        # station would go deaf before a -80 dBm policy acts. detect_dbm (-92 by
        # default) is what a real card hears, so the link degrades past -80 instead.
        if pc.detect_dbm is not None:
            phy.SetPreambleDetectionModel("ns3::ThresholdPreambleDetectionModel",
                                          "MinimumRssi", ns.DoubleValue(pc.detect_dbm))
        mac = ns.WifiMacHelper()
        ssid = ns.Ssid(f"ipcgw{i}")
        mac.SetType("ns3::StaWifiMac", "Ssid", ns.SsidValue(ssid))
        sta = wifi.Install(phy, mac, cli).Get(0)
        mac.SetType("ns3::ApWifiMac", "Ssid", ns.SsidValue(ssid))
        ap = wifi.Install(phy, mac, srv).Get(0)
        for dev in (sta, ap):  # the WifiMacQueue is the bottleneck queue
            wdev = ns.DynamicCast[ns.WifiNetDevice](dev)
            wdev.GetMac().GetTxopQueue(ns.AC_BE_NQOS).SetMaxSize(
                ns.QueueSize(f"{pc.queue}p"))
        mobility = ns.MobilityHelper()
        mobility.SetMobilityModel("ns3::ConstantPositionMobilityModel")
        mobility.Install(srv)
        sta_mob = install_mobility(ns, cli, pc, float(self.cfg.get("duration") or 86400.0))
        wdevs = [ns.DynamicCast[ns.WifiNetDevice](d) for d in (sta, ap)]
        phys, macs = [d.GetPhy() for d in wdevs], [d.GetMac() for d in wdevs]
        set_attributes(ns, f"path {i}", {
            "device": wdevs, "phy": phys, "sta_phy": phys[:1], "ap_phy": phys[1:],
            "mac": macs, "sta_mac": macs[:1], "ap_mac": macs[1:],
            "manager": [d.GetRemoteStationManager() for d in wdevs],
            "queue": [m.GetTxopQueue(ns.AC_BE_NQOS) for m in macs], "mobility": [sta_mob]},
            pc.extra)
        ap_mob = srv.GetObject[ns.MobilityModel]()
        crelay = self._relay(cfd, sta, ap.GetAddress())
        srelay = self._relay(sfd, ap, sta.GetAddress())
        rssi = self.cpp.WifiSignal()  # unfiltered, local, for progress lines
        rssi.alpha = 1.0
        rssi.FilterFrom(ap.GetAddress())
        rssi.Attach(ns.DynamicCast[ns.WifiNetDevice](sta).GetPhy())
        # the same model and defaults as YansWifiChannelHelper.Default()'s channel:
        # the RSSI the station would measure at its position, frame or no frame
        model = ns.CreateObject[ns.LogDistancePropagationLossModel]()
        self.keep += [rssi, model]
        self.wifi[i] = {"sta": sta, "ap": ap, "sta_mob": sta_mob, "ap_mob": ap_mob,
                        "rssi": rssi, "model": model, "tx_dbm": pc.tx_power_dbm,
                        "report": None}
        return sta, ap, crelay, srelay

    def progress(self, sim: float, wall: float) -> dict[str, Any]:
        """Station 1's numbers at the top level; with more stations, ``stations`` has
        every station's (1 first) under the same keys."""
        out: dict[str, Any] = {"sim": round(sim, 3), "wall": round(wall, 3),
                               "lag": round(wall - sim, 3),
                               "cpu": round(time.process_time(), 3)}  # all threads
        per = []
        for st in self.stations:
            self.relays, self.drops, self.wifi = st
            per.append(self._station_progress())
        self.relays, self.drops, self.wifi = self.stations[0]
        out.update(per[0])
        if self.lte:
            from ns3_side.lab import lte

            out.update(lte.progress(self.lte))
        if len(per) > 1:
            out["stations"] = per
        return out

    def _station_progress(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["to_link"] = [[int(c.to_link), int(s.to_link)] for c, s in self.relays]
        out["refused"] = [[int(c.link_refused), int(s.link_refused)] for c, s in self.relays]
        losses = [[_causes(str(c.Dump())) for c in pair] for pair in self.drops]
        out["queue_drops"] = [[side.get("queue", 0) for side in pair] for pair in losses]
        out["losses"] = losses  # per path, [client side, server side]: {cause: n}
        out["delivered"] = [[int(c.to_fd), int(s.to_fd)] for c, s in self.relays]
        rssi, raw, frames, model, dist = {}, {}, {}, {}, {}
        for i, w in self.wifi.items():
            if w["rssi"].have:
                raw[i] = round(float(w["rssi"].a), 2)
            frames[i] = int(w["rssi"].samples)  # unchanged between lines: deaf
            hook = w["report"]
            value = hook.value if hook is not None else None
            if value is not None:
                rssi[i] = round(value[0], 2)  # what the reports carry (filtered)
            elif i in raw:
                rssi[i] = raw[i]
            model[i] = round(float(w["model"].CalcRxPower(w["tx_dbm"], w["ap_mob"],
                                                          w["sta_mob"])), 2)
            dist[i] = round(float(self.dp.Distance(w["sta_mob"], w["ap_mob"])), 2)
        out["rssi"], out["rssi_raw"], out["frames"] = rssi, raw, frames
        out["model_rssi"], out["distance"] = model, dist
        return out

    def model_rssi(self, i: int, station: int = 1) -> float:
        w = self.stations[station - 1][2][i]
        return float(w["model"].CalcRxPower(w["tx_dbm"], w["ap_mob"], w["sta_mob"]))


def _causes(dump: str) -> dict[str, int]:
    out = {}
    for item in filter(None, dump.split(";")):
        name, _, n = item.partition("=")
        out[name] = int(n)
    return out


def _log_reports(gw: Any, threshold: float, station: int = 1) -> None:
    """Every report also goes to stdout (``{"type": "report", ...}``, ≤ 10/s): the
    controller gets the reaction chain's instants as the simulation stamped them."""
    send = gw.emit

    def emit(report: Any) -> None:
        send(report)
        _emit("report", sim=report.sim_time, path=report.path_id, node=report.node_id,
              station=station, **report.metrics)

    gw.emit = emit


def _watch_crossing(sim: Sim, path: int, threshold: float, step_s: float = 0.01,
                    station: int = 1) -> None:
    """One ``{"type": "mark", "what": "model_crossing"}`` line when the propagation
    model's RSSI at the station first drops below ``threshold``: sim time
    interpolated between 10 ms ticks, host time = the tick's CLOCK_MONOTONIC minus
    the same sim difference (real time: both clocks advance together)."""
    ticker = sim.cpp.Ticker()
    ticker.period = step_s
    prev: list[tuple[float, float]] = []
    done = [False]

    def tick(t: float) -> None:
        if done[0]:
            return  # (stopping the ticker from inside its own call would free fn)
        now = time.monotonic()
        rssi = sim.model_rssi(path, station)
        if prev and prev[0][1] >= threshold > rssi:
            t0, r0 = prev[0]
            at = t0 + (t - t0) * (r0 - threshold) / max(r0 - rssi, 1e-9)
            _emit("mark", what="model_crossing", path=path, station=station, sim=round(at, 6),
                  mono=round(now - (t - at), 6), tick_sim=t, tick_mono=now)
            done[0] = True
        prev[:] = [(t, rssi)]

    ticker.fn = tick
    ticker.Start(step_s)
    sim.keep.append(ticker)


def _station_gateway(sim: Sim, station: int, gcfg: dict[str, Any]) -> Any:
    """Station ``station``'s WiFi RSSI and link state to its server (station 1 also its
    LTE path's RSRP/SINR); reports carry the station's own ns-3 node id."""
    import ns3_side

    gw = ns3_side.SimClient(gcfg["url"], name=f"dataplane-s{station}")
    wlan = int(gcfg["path_id"])
    w = sim.stations[station - 1][2][wlan]
    threshold = float(gcfg.get("threshold_dbm", -80.0))
    _log_reports(gw, threshold, station)
    w["report"] = ns3_side.wifi_signal(
        gw, w["sta"], wlan, alpha=float(gcfg.get("alpha", 0.3)),
        tau_ms=float(gcfg.get("tau_ms", 0.0)),
        min_interval_ms=float(gcfg.get("min_interval_ms", 100.0)),
        from_address=w["ap"].GetAddress(), stamp=True)
    ns3_side.link_state(gw, w["sta"], wlan, stamp=True)
    _watch_crossing(sim, wlan, threshold, station=station)
    if station == 1:  # the LTE path's UE reports its RSRP/SINR the same way (at most 10/s)
        for i, link in sim.lte.items():
            ns3_side.lte_signal(gw, link.ueDev, i, stamp=True,
                                min_interval_ms=float(gcfg.get("min_interval_ms", 100.0)))
    return gw


def run(cfg: dict[str, Any]) -> None:
    sim = Sim(cfg)
    ns, cpp = sim.ns, sim.cpp
    duration = cfg.get("duration") or 10 * 86400.0
    start = [0.0]

    ticker = cpp.Ticker()
    ticker.period = float(cfg.get("progress_s", 0.5))

    def tick(t: float) -> None:
        _emit("progress", **sim.progress(t, time.monotonic() - start[0]))

    ticker.fn = tick
    ticker.Start(ticker.period)
    stall = cfg.get("stall")  # tests: block the simulation thread [at, seconds]
    if stall:
        once = cpp.Once()
        once.fn = lambda: time.sleep(float(stall[1]))
        once.At(float(stall[0]))
        sim.keep.append(once)
    gcfg = cfg.get("gateway")
    if gcfg:
        # one gateway session per station (its own server, in its own client namespace)
        gws = [_station_gateway(sim, k, g) for k, g in
               enumerate([gcfg, *(cfg.get("station_gateways") or [])], start=1) if g]
        _emit("ready", paths=len(sim.relays), gateway=gcfg["url"])
        start[0] = time.monotonic()
        try:
            gws[0].run(until=duration)
        finally:
            for gw in gws[1:]:
                gw.close()
        for gw in gws[1:]:
            gw.check()
    else:
        _emit("ready", paths=len(sim.relays), gateway=None)
        ns.Simulator.Stop(ns.Seconds(duration))
        start[0] = time.monotonic()
        ns.Simulator.Run()
    final = sim.progress(float(ns.Simulator.Now().GetSeconds()), time.monotonic() - start[0])
    ticker.Stop()
    _emit("done", **final)
    sys.stdout.flush()
    # Destroy can hang with FdNetDevice reader threads; the fds die with us anyway.
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m ns3_side.lab.simproc CONFIG.json")
    with open(args[0]) as f:
        cfg = json.load(f)
    _die_with_parent()
    if cfg.get("netns"):
        from ipcgw.netns import netns_path, setns

        fd = os.open(netns_path(cfg["netns"]), os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)  # main thread, before any other thread exists: the whole process
        finally:
            os.close(fd)
    try:
        run(cfg)
    except Exception as exc:
        print(f"ns3_side.lab.simproc: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)


def _die_with_parent() -> None:
    """If the controller dies, so do we (our TAP fds then close, removing the TAPs)."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    main()
