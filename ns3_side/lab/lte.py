"""A real LTE path for the data plane: ns-3 LENA (``LteHelper`` + ``PointToPointEpcHelper``).

::

    client ns eth<i> 7.0.0.2 ═TAP═ FdNetDevice ─IpRelay─ LteUeNetDevice (UE, client ghost)
        ~~ radio (RLC AM, PF scheduler) ~~ eNB ── S1-U ── SGW ── S5 ── PGW (7.0.0.1)
        ── SGi p2p 1.0.0.1 ↔ 1.0.0.2 (remote host = server ghost) ─IpRelay─ FdNetDevice ═TAP═
    server ns eth<i> 10.0.i.2

Why this shape: LTE is L3. The UE device takes IP packets (no Ethernet, no
ARP) and the PGW maps every downlink packet to a UE by its destination
address, so the L2 :class:`Relay` of the other kinds cannot carry it. Instead
the client namespace's ``eth<i>`` *is* the UE's address (``7.0.0.2``, the
first address the EPC hands out; checked at build time): an IP relay hands
the TAP's IPv4 packets to the UE device as they are, and the UE device's
downlink packets to the TAP. The ghost nodes get an Internet stack only so
that the EPC can assign the UE's address and the SGi link can be numbered;
their own IP stacks never see a data packet (the relays replace the devices'
receive callbacks). The PGW's default route points at the remote host, so
uplink packets to any server address (MPTCP subflows to ``10.0.1.2`` too)
leave through SGi. Both TAPs are NOARP (there is no neighbour to ask): the
controller adds the routes (client: ``default via 7.0.0.1`` in the lte path's
table; server: ``7.0.0.0/8`` on its ``eth<i>``) and passes each TAP's MAC
(the config's ``lte_tap_macs``) so frames written to it are for its host.

One LTE path per simulation: a second EPC in the same simulation would share
LENA's global IMSI/cell-id counters and the 7.0.0.0/8 pool, and several
stations' servers share addresses, which one PGW cannot tell apart.

Signal: the UE PHY's ``ReportCurrentCellRsrpSinr`` (RSRP in W per resource
element, SINR linear) is kept in C++ as dBm/dB and read by the progress line
(``rsrp_dbm``, ``sinr_db`` per lte path, like ``rssi`` for WiFi).

Losses (``losses`` in the progress line, ``[radio side, SGi side]``):
radio side ``ue_nas_refused`` (the UE had no active bearer yet: before
attach), ``rlc_ul_buffer`` / ``rlc_dl_buffer`` (RLC AM transmit buffer full,
UE / eNB ``LteRlc::TxDrop``), ``tap_write``; SGi side ``queue`` (either SGi
p2p device queue), ``error_model`` (none configured), ``tap_write``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ns3_side.lab.paths import LTE_UE_ADDR, TAP_MTU, PathConfig

__all__ = ["LTE_SOURCE", "build", "progress"]

LTE_SOURCE = r"""
#include <cmath>
#include <functional>
#include <sstream>
#include <string>

namespace ipcgw_lte {
using namespace ns3;
using ipcgw_dp::LossCount;

// Carries IPv4 packets between a TAP's FdNetDevice and an L3 device (the UE's
// LteUeNetDevice, or the remote host's SGi p2p device). Same counters as
// ipcgw_dp::Relay, so the progress line reads both alike.
struct IpRelay {
    Ptr<NetDevice> fd;
    Ptr<NetDevice> link;
    Mac48Address tap;                   // the namespace's eth<i>: frames we write are for it
    LossCount* refused_loss = nullptr;  // set where a refused send is a loss of its own
    std::string refused_cause;          // (a full p2p queue is already counted by its Drop)
    LossCount* fd_loss = nullptr;
    uint64_t to_link = 0, to_fd = 0, link_refused = 0, fd_refused = 0, not_ipv4 = 0;

    bool FromFd(Ptr<NetDevice>, Ptr<const Packet> p, uint16_t proto, const Address&,
                const Address&, NetDevice::PacketType) {
        // only IPv4 crosses: the UE device aborts on anything but IP, and the TAPs are NOARP
        if (proto != 0x0800) { ++not_ipv4; return true; }
        if (link->Send(p->Copy(), link->GetBroadcast(), proto)) {
            ++to_link;
        } else {
            ++link_refused;
            if (refused_loss) refused_loss->Add(refused_cause);
        }
        return true;
    }
    bool FromLink(Ptr<NetDevice>, Ptr<const Packet> p, uint16_t proto, const Address&) {
        if (fd->Send(p->Copy(), tap, proto)) {
            ++to_fd;
        } else {
            ++fd_refused;
            if (fd_loss) fd_loss->Add("tap_write");
        }
        return true;
    }
    bool Ignore(Ptr<NetDevice>, Ptr<const Packet>, uint16_t, const Address&) { return true; }
    void Attach() {
        fd->SetPromiscReceiveCallback(MakeCallback(&IpRelay::FromFd, this));
        fd->SetReceiveCallback(MakeCallback(&IpRelay::Ignore, this));
        link->SetReceiveCallback(MakeCallback(&IpRelay::FromLink, this));  // bypasses the node's IP
    }
};

// The UE PHY's ReportCurrentCellRsrpSinr, kept as dBm / dB; fn (optional) gets
// (sim seconds, rsrp_dbm, sinr_db) per sample (RsrpSinrSamplePeriod TTIs apart).
struct LteSignal {
    std::function<void(double, double, double)> fn;
    double rsrp_dbm = 0.0, sinr_db = 0.0;
    uint16_t cell = 0, rnti = 0;
    uint64_t samples = 0;
    bool have = false, stopped = false;

    void Report(uint16_t cellId, uint16_t r, double rsrpW, double sinrLinear, uint8_t) {
        if (stopped) return;
        cell = cellId;
        rnti = r;
        rsrp_dbm = 10.0 * std::log10(rsrpW) + 30.0;
        sinr_db = 10.0 * std::log10(sinrLinear);
        have = true;
        ++samples;
        if (fn) fn(Simulator::Now().GetSeconds(), rsrp_dbm, sinr_db);
    }
};

struct Cause {
    LossCount* c = nullptr;
    std::string name;
    void Hit(Ptr<const Packet>) { if (c) c->Add(name); }
};

// One LTE path: eNB, UE, EPC, SGi link, the two relays and the signal.
struct LteLink {
    Ptr<LteHelper> lte;
    Ptr<PointToPointEpcHelper> epc;
    Ptr<Node> enb;
    Ptr<NetDevice> enbDev, ueDev, pgwDev, rhDev;
    IpRelay ue, rh;
    LteSignal signal;
    Cause ulRlc, dlRlc;
    double drb_at = -1.0;  // sim time the UE's data radio bearer came up
    int rlc_hooks = 0;
    bool hooked = false;

    // returns the UE's address as the EPC assigned it
    std::string Build(Ptr<Node> ueNode, Ptr<Node> rhNode, Ptr<NetDevice> cfd,
                      Ptr<NetDevice> sfd, Mac48Address cliMac, Mac48Address srvMac,
                      double distance, double speed, uint16_t rb, double sgiDelayMs,
                      uint32_t sgiMtu,
                      uint32_t queuePackets, LossCount* radio, LossCount* sgi) {
        epc = CreateObject<PointToPointEpcHelper>();
        lte = CreateObject<LteHelper>();
        lte->SetEpcHelper(epc);
        lte->SetEnbDeviceAttribute("DlBandwidth", UintegerValue(rb));
        lte->SetEnbDeviceAttribute("UlBandwidth", UintegerValue(rb));
        Ptr<Node> pgw = epc->GetPgwNode();
        InternetStackHelper internet;
        internet.Install(rhNode);
        internet.Install(ueNode);

        PointToPointHelper p2p;  // SGi: fast, so the radio is the bottleneck
        p2p.SetDeviceAttribute("DataRate", StringValue("1Gbps"));
        p2p.SetDeviceAttribute("Mtu", UintegerValue(sgiMtu));
        std::ostringstream delay; delay << sgiDelayMs << "ms";
        p2p.SetChannelAttribute("Delay", StringValue(delay.str()));
        std::ostringstream q; q << queuePackets << "p";
        p2p.SetQueue("ns3::DropTailQueue<Packet>", "MaxSize", QueueSizeValue(QueueSize(q.str())));
        NetDeviceContainer link = p2p.Install(pgw, rhNode);
        pgwDev = link.Get(0);
        rhDev = link.Get(1);
        Ipv4AddressHelper addr("1.0.0.0", "255.0.0.0");
        addr.Assign(link);  // PGW 1.0.0.1, remote host 1.0.0.2
        Ptr<Ipv4> pgwIp = pgw->GetObject<Ipv4>();
        Ipv4StaticRoutingHelper routing;
        // every non-UE destination (each server address) is behind the remote host
        routing.GetStaticRouting(pgwIp)->SetDefaultRoute(
            Ipv4Address("1.0.0.2"), pgwIp->GetInterfaceForDevice(pgwDev));

        enb = CreateObject<Node>();
        MobilityHelper mobility;
        mobility.SetMobilityModel("ns3::ConstantPositionMobilityModel");
        mobility.Install(enb);
        mobility.SetMobilityModel("ns3::ConstantVelocityMobilityModel");
        mobility.Install(ueNode);  // away from the eNB at speed (0: it stays)
        Ptr<ConstantVelocityMobilityModel> ueMob =
            ueNode->GetObject<ConstantVelocityMobilityModel>();
        ueMob->SetPosition(Vector(distance, 0.0, 0.0));
        ueMob->SetVelocity(Vector(speed, 0.0, 0.0));
        enbDev = lte->InstallEnbDevice(NodeContainer(enb)).Get(0);
        ueDev = lte->InstallUeDevice(NodeContainer(ueNode)).Get(0);
        Ipv4InterfaceContainer ueIf = epc->AssignUeIpv4Address(NetDeviceContainer(ueDev));
        lte->Attach(ueDev, enbDev);  // default bearer (EpcTft::Default: everything)

        Ptr<LteUeNetDevice> uedev = DynamicCast<LteUeNetDevice>(ueDev);
        uedev->GetPhy()->TraceConnectWithoutContext(
            "ReportCurrentCellRsrpSinr", MakeCallback(&LteSignal::Report, &signal));
        uedev->GetRrc()->TraceConnectWithoutContext(
            "DrbCreated", MakeCallback(&LteLink::OnDrb, this));

        ulRlc.c = radio; ulRlc.name = "rlc_ul_buffer";
        dlRlc.c = radio; dlRlc.name = "rlc_dl_buffer";
        for (uint32_t k = 0; k < link.GetN(); ++k) {
            Ptr<PointToPointNetDevice> d = DynamicCast<PointToPointNetDevice>(link.Get(k));
            sgi->AttachQueue(d->GetQueue());
            sgi->AttachP2p(d);
        }
        ue.fd = cfd; ue.link = ueDev; ue.tap = cliMac;
        ue.refused_loss = radio; ue.refused_cause = "ue_nas_refused"; ue.fd_loss = radio;
        rh.fd = sfd; rh.link = rhDev; rh.tap = srvMac; rh.fd_loss = sgi;
        // last: installing the stacks above set the devices' receive callbacks
        ue.Attach();
        rh.Attach();
        std::ostringstream ueAddr; ueAddr << ueIf.GetAddress(0);
        return ueAddr.str();
    }

    void OnDrb(uint64_t, uint16_t, uint16_t, uint8_t) {
        drb_at = Simulator::Now().GetSeconds();
        // the RLC entities exist once the DRB does; connect on the next tick to be sure
        if (!hooked) Simulator::Schedule(MilliSeconds(1), &LteLink::HookRlc, this);
        hooked = true;
    }

    void HookRlc() {
        std::ostringstream u, e;
        u << "/NodeList/" << ueDev->GetNode()->GetId() << "/DeviceList/" << ueDev->GetIfIndex()
          << "/$ns3::LteUeNetDevice/LteUeRrc/DataRadioBearerMap/*/LteRlc/TxDrop";
        e << "/NodeList/" << enb->GetId() << "/DeviceList/" << enbDev->GetIfIndex()
          << "/$ns3::LteEnbNetDevice/LteEnbRrc/UeMap/*/DataRadioBearerMap/*/LteRlc/TxDrop";
        if (Config::ConnectWithoutContextFailSafe(u.str(), MakeCallback(&Cause::Hit, &ulRlc)))
            ++rlc_hooks;
        if (Config::ConnectWithoutContextFailSafe(e.str(), MakeCallback(&Cause::Hit, &dlRlc)))
            ++rlc_hooks;
    }

    double Distance() const {
        return enb->GetObject<MobilityModel>()->GetDistanceFrom(
            ueDev->GetNode()->GetObject<MobilityModel>());
    }
};
}  // namespace ipcgw_lte
"""

# TTIs (1 ms) between two RSRP/SINR samples: 10 a second is plenty for a
# progress line, and a trace call per TTI would be 1000 a second for nothing.
RSRP_SAMPLE_TTIS = 100
SGI_DELAY_MS_DEFAULT = 10.0


def _define() -> Any:
    import cppyy

    if not hasattr(cppyy.gbl, "ipcgw_lte"):
        cppyy.cppdef(LTE_SOURCE)
    return cppyy.gbl.ipcgw_lte


def _defaults(ns: Any, pc: PathConfig, given: dict[str, Any]) -> None:
    """Process-wide LENA defaults; they must be set before the objects exist.

    RLC AM (ARQ) on the default bearer, as operators run best-effort data: the
    radio's residual HARQ losses are then retransmitted and only a full
    transmit buffer loses a packet for good (counted). The buffer holds
    ``pc.queue`` full frames, the path's deliberate bottleneck queue. A default
    the user gave (``given``, ``--ns3-default``) wins over ours.
    """
    ours = {"ns3::LteEnbRrc::EpsBearerToRlcMapping": ns.StringValue("RlcAmAlways"),
            "ns3::LteRlcAm::MaxTxBufferSize": ns.UintegerValue(pc.queue * TAP_MTU),
            "ns3::LteUePhy::RsrpSinrSamplePeriod": ns.UintegerValue(RSRP_SAMPLE_TTIS)}
    for name, value in ours.items():
        if name not in given:
            ns.Config.SetDefault(name, value)


def build(sim: Any, i: int, pc: PathConfig, cli: Any, srv: Any, cfd: Any, sfd: Any
          ) -> tuple[Any, Any, list[Any], Any]:
    """Path ``i`` as LTE on ``sim``'s ghost nodes (UE = ``cli``, remote host = ``srv``).

    Returns (UE relay, remote-host relay, [radio-side, SGi-side] loss counters,
    the ``LteLink``) for :class:`ns3_side.lab.simproc.Sim`'s bookkeeping.
    """
    ns = sim.ns
    macs = (sim.cfg.get("lte_tap_macs") or {}).get(str(i))
    if not macs or len(macs) != 2:
        raise ValueError(f"path {i} (lte): lte_tap_macs[{i}] = [client MAC, server MAC] missing "
                         "from the config (DataPlane sets it)")
    lte = _define()
    _defaults(ns, pc, sim.cfg.get("ns3_defaults") or {})
    radio, sgi = sim._loss_counter(), sim._loss_counter()
    link = lte.LteLink()
    got = str(link.Build(cli, srv, cfd, sfd, ns.Mac48Address(macs[0]), ns.Mac48Address(macs[1]),
                         float(pc.lte_distance_m), float(pc.speed_mps), int(pc.lte_rb),
                         float(pc.delay_ms),
                         TAP_MTU, int(pc.queue), radio, sgi))
    if ipaddress.ip_address(got) != ipaddress.ip_address(LTE_UE_ADDR):
        raise RuntimeError(f"path {i} (lte): the EPC gave the UE {got}, but the client "
                           f"namespace uses {LTE_UE_ADDR} (one LTE path per simulation)")
    sim.keep.append(link)
    return link.ue, link.rh, [radio, sgi], link


def progress(links: dict[int, Any]) -> dict[str, Any]:
    """The lte paths' part of a progress line, keyed by path id like WiFi's ``rssi``:
    ``rsrp_dbm``/``sinr_db`` (latest sample; absent before the first), ``lte_samples``
    (unchanged between lines: no reports), ``lte_ready_s`` (sim time the data bearer
    came up, None before), ``lte_distance``, ``lte_rlc_hooks`` (2 = both RLC buffers
    counted)."""
    rsrp, sinr, samples, ready, dist, hooks = {}, {}, {}, {}, {}, {}
    for i, link in links.items():
        sig = link.signal
        if sig.have:
            rsrp[i] = round(float(sig.rsrp_dbm), 2)
            sinr[i] = round(float(sig.sinr_db), 2)
        samples[i] = int(sig.samples)
        ready[i] = round(float(link.drb_at), 3) if link.drb_at >= 0 else None
        dist[i] = round(float(link.Distance()), 2)
        hooks[i] = int(link.rlc_hooks)
    return {"rsrp_dbm": rsrp, "sinr_db": sinr, "lte_samples": samples, "lte_ready_s": ready,
            "lte_distance": dist, "lte_rlc_hooks": hooks}
