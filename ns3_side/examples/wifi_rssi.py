"""Example (a): a station walks away from a WiFi AP; its filtered RSSI drives MPTCP.

The station starts ``start_m`` from the AP and moves away at ``speed``; its
PHY's ``MonitorSnifferRx`` gives RSSI/SNR of every frame it hears (beacons
plus a UDP stream from the AP), low-pass filtered and rate limited here, and
sent as ``Report(path_id=2, {"rssi_dbm", "snr_db"})``. A server run as::

    python -m ipcgw serve --listen URL --handler mptcp \\
        --policy ipcgw.mptcp.policy:RssiPolicy

sets WLAN endpoint id 2 to backup when the RSSI falls below -80 dBm; check
with ``ip mptcp endpoint show``. With the default log-distance model and
16 dBm transmit power, -80 dBm is about 45 m from the AP.

Legacy mode: ``--url 'fifo:///tmp/mptcp-ns3-fifo?framing=fixed:8&codec=sspi'``
sends WIFI_SNR records to an mptcpd sspi FIFO instead, and ``--backup-below``
makes the simulation itself send BACKUP_FLAG_ON / CLEAR_FLAGS.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

WLAN_PATH = 2


@dataclass
class WifiScenario:
    ap: Any
    sta: Any
    ap_device: Any
    sta_device: Any
    sta_mobility: Any


def build(ns: Any, *, start_m: float = 10.0, speed: float = 10.0,
          traffic_pps: float = 50.0, duration: float = 10.0) -> WifiScenario:
    """AP at the origin, a station moving along +x, UDP from AP to station."""
    nodes = ns.NodeContainer()
    nodes.Create(2)
    ap, sta = nodes.Get(0), nodes.Get(1)
    wifi = ns.WifiHelper()
    phy = ns.YansWifiPhyHelper()
    phy.SetChannel(ns.YansWifiChannelHelper.Default().Create())
    # The default preamble detection drops everything below -82 dBm: the station
    # would go deaf right after the -80 dBm crossing, before a filtered RSSI (the
    # server policy's included) gets there. A real card hears down to ~-90 dBm.
    phy.SetPreambleDetectionModel("ns3::ThresholdPreambleDetectionModel",
                                  "MinimumRssi", ns.DoubleValue(-92.0))
    mac = ns.WifiMacHelper()
    ssid = ns.Ssid("ipcgw")
    mac.SetType("ns3::StaWifiMac", "Ssid", ns.SsidValue(ssid))
    sta_devs = wifi.Install(phy, mac, sta)
    mac.SetType("ns3::ApWifiMac", "Ssid", ns.SsidValue(ssid))
    ap_devs = wifi.Install(phy, mac, ap)

    mobility = ns.MobilityHelper()
    mobility.SetMobilityModel("ns3::ConstantPositionMobilityModel")
    mobility.Install(ap)
    mobility.SetMobilityModel("ns3::ConstantVelocityMobilityModel")
    mobility.Install(sta)
    sta_mob = sta.GetObject[ns.ConstantVelocityMobilityModel]()
    sta_mob.SetPosition(ns.Vector(start_m, 0, 0))
    sta_mob.SetVelocity(ns.Vector(speed, 0, 0))

    if traffic_pps > 0:
        ns.InternetStackHelper().Install(nodes)
        addresses = ns.Ipv4AddressHelper()
        addresses.SetBase(ns.Ipv4Address("10.9.0.0"), ns.Ipv4Mask("255.255.255.0"))
        addresses.Assign(sta_devs)
        addresses.Assign(ap_devs)
        sink = ns.UdpServerHelper(9)
        sink.Install(sta).Start(ns.Seconds(0))
        source = ns.UdpClientHelper(ns.InetSocketAddress(ns.Ipv4Address("10.9.0.1"), 9).ConvertTo())
        source.SetAttribute("Interval", ns.TimeValue(ns.Seconds(1.0 / traffic_pps)))
        source.SetAttribute("MaxPackets", ns.UintegerValue(int(traffic_pps * duration) + 1))
        source.SetAttribute("PacketSize", ns.UintegerValue(200))
        apps = source.Install(ap)
        apps.Start(ns.Seconds(0.5))
    return WifiScenario(ap, sta, ap_devs.Get(0), sta_devs.Get(0), sta_mob)


def attach(gw: Any, scenario: WifiScenario, *, alpha: float = 0.3,
           min_interval_ms: float = 100.0, backup_below: float | None = None,
           endpoint_id: int = 2) -> Any:
    """The station's filtered RSSI/SNR and link state as path-2 reports; with
    ``backup_below`` the simulation itself flags the endpoint (legacy mptcpd has no
    policy of its own). Returns the RSSI hook."""
    import ns3_side

    hook = ns3_side.wifi_signal(gw, scenario.sta_device, WLAN_PATH, alpha=alpha,
                                min_interval_ms=min_interval_ms,
                                from_address=scenario.ap_device.GetAddress())
    ns3_side.link_state(gw, scenario.sta_device, WLAN_PATH)
    if backup_below is not None:
        state = {"backup": False}

        def decide(t: float) -> None:
            value = hook.value
            if value is None:
                return
            backup = value[0] < backup_below
            if backup != state["backup"]:
                state["backup"] = backup
                gw.set_backup(endpoint_id, backup)

        gw.every(min_interval_ms, decide)
    return hook


def run(url: str, *, duration: float = 10.0, start_m: float = 10.0, speed: float = 10.0,
        alpha: float = 0.3, min_interval_ms: float = 100.0, lockstep: bool = False,
        backup_below: float | None = None, endpoint_id: int = 2) -> Any:
    """Build, connect, run; returns the gateway (closed) for its counters."""
    import ns3_side
    from ns3_side._cpp import load

    ns, _ = load()
    scenario = build(ns, start_m=start_m, speed=speed, duration=duration)
    with ns3_side.SimClient(url, name="wifi_rssi", lockstep=lockstep) as gw:
        attach(gw, scenario, alpha=alpha, min_interval_ms=min_interval_ms,
               backup_below=backup_below, endpoint_id=endpoint_id)
        gw.run(until=duration)
    ns.Simulator.Destroy()
    return gw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="tcp://127.0.0.1:7700")
    parser.add_argument("--duration", type=float, default=10.0, help="sim seconds")
    parser.add_argument("--start", type=float, default=10.0, help="initial distance, m")
    parser.add_argument("--speed", type=float, default=10.0, help="m/s away from the AP")
    parser.add_argument("--alpha", type=float, default=0.3, help="EWMA weight of new samples")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="min report interval")
    parser.add_argument("--lockstep", action="store_true")
    parser.add_argument("--backup-below", type=float, help="dBm: the sim flags the endpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    gw = run(args.url, duration=args.duration, start_m=args.start, speed=args.speed,
             alpha=args.alpha, min_interval_ms=args.interval_ms, lockstep=args.lockstep,
             backup_below=args.backup_below)
    print(f"reports sent {gw.reports_sent}, not expressible {gw.reports_unsendable}, "
          f"steps {gw.steps}")


if __name__ == "__main__":
    main()
