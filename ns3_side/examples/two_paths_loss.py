"""Example (b): two point-to-point paths whose loss changes over sim time.

A client node reaches a server node over path 1 and path 2 (one link and
subnet each), with a UDP stream on each. The receiving devices drop packets
through a packet-unit ``RateErrorModel`` whose rate follows ``schedule``
(sim time -> (loss path 1, loss path 2)). ``ns3_side.loss`` turns each
receiving device's ``PhyRxEnd``/``PhyRxDrop`` traces into one
``Report(path_id, {"loss", "packets"})`` per period; a TCP bulk flow on path 1
adds ``cwnd_bytes``, ``rtt_ms`` and (it fills the sender's queue)
``queue_drops``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any

# sim time (s) -> loss ratio of path 1 and path 2 from then on
DEFAULT_SCHEDULE: dict[float, tuple[float, float]] = {0.0: (0.0, 0.1), 2.0: (0.2, 0.0)}


@dataclass
class TwoPaths:
    client: Any
    server: Any
    rx_devices: list[Any]  # server side, index 0 = path 1
    tx_devices: list[Any]
    error_models: list[Any]
    delays_ms: tuple[float, float]
    keep: list[Any] = field(default_factory=list)


def build(ns: Any, *, rate: str = "10Mbps", delays_ms: tuple[float, float] = (10.0, 30.0),
          pps: float = 200.0, duration: float = 4.0, tcp: bool = True) -> TwoPaths:
    nodes = ns.NodeContainer()
    nodes.Create(2)
    client, server = nodes.Get(0), nodes.Get(1)
    ns.InternetStackHelper().Install(nodes)
    rx_devices, tx_devices, models, server_addrs = [], [], [], []
    for i, delay in enumerate(delays_ms):
        p2p = ns.PointToPointHelper()
        p2p.SetDeviceAttribute("DataRate", ns.StringValue(rate))
        p2p.SetChannelAttribute("Delay", ns.StringValue(f"{delay}ms"))
        devices = p2p.Install(client, server)
        model = ns.CreateObject[ns.RateErrorModel]()
        model.SetUnit(ns.RateErrorModel.ERROR_UNIT_PACKET)
        model.SetRate(0.0)
        devices.Get(1).SetAttribute("ReceiveErrorModel", ns.PointerValue(model))
        addresses = ns.Ipv4AddressHelper()
        addresses.SetBase(ns.Ipv4Address(f"10.{i + 1}.0.0"), ns.Ipv4Mask("255.255.255.0"))
        interfaces = addresses.Assign(devices)
        server_addrs.append(interfaces.GetAddress(1))
        tx_devices.append(devices.Get(0))
        rx_devices.append(devices.Get(1))
        models.append(model)
        sink = ns.UdpServerHelper(9 + i)
        sink.Install(server).Start(ns.Seconds(0))
        source = ns.UdpClientHelper(ns.InetSocketAddress(server_addrs[i], 9 + i).ConvertTo())
        source.SetAttribute("Interval", ns.TimeValue(ns.Seconds(1.0 / pps)))
        source.SetAttribute("MaxPackets", ns.UintegerValue(int(pps * duration) + 1))
        source.SetAttribute("PacketSize", ns.UintegerValue(500))
        source.Install(client).Start(ns.Seconds(0.1))
    if tcp:
        bulk = ns.BulkSendHelper("ns3::TcpSocketFactory",
                                 ns.InetSocketAddress(server_addrs[0], 5000).ConvertTo())
        bulk.SetAttribute("MaxBytes", ns.UintegerValue(0))
        bulk.Install(client).Start(ns.Seconds(0.2))
        sink = ns.PacketSinkHelper("ns3::TcpSocketFactory",
                                   ns.InetSocketAddress(ns.Ipv4Address.GetAny(), 5000).ConvertTo())
        sink.Install(server).Start(ns.Seconds(0))
    return TwoPaths(client, server, rx_devices, tx_devices, models, delays_ms)


def attach(gw: Any, paths: TwoPaths, schedule: dict[float, tuple[float, float]],
           *, period_ms: float = 500.0, tcp: bool = True) -> list[Any]:
    """Loss hooks per path (path ids 1 and 2), the loss schedule, TCP hooks on path 1."""
    import ns3_side

    hooks = [ns3_side.loss(gw, dev, path_id, period_ms=period_ms)
             for path_id, dev in enumerate(paths.rx_devices, start=1)]
    hooks += [ns3_side.queue_drops(gw, dev, path_id, period_ms=period_ms)
              for path_id, dev in enumerate(paths.tx_devices, start=1)]
    for when, rates in sorted(schedule.items()):
        def apply(rates: tuple[float, float] = rates) -> None:
            for model, rate in zip(paths.error_models, rates, strict=True):
                model.SetRate(rate)
        if when <= 0:
            apply()
        else:
            gw.schedule(when, apply)
    if tcp:
        socket = ns3_side.tcp_socket_path(int(paths.client.GetId()), 0)
        node = int(paths.client.GetId())
        hooks.append(ns3_side.tcp_cwnd(gw, socket, 1, at=0.3, node_id=node, period_ms=period_ms))
        hooks.append(ns3_side.tcp_rtt(gw, socket, 1, at=0.3, node_id=node, period_ms=period_ms))
    return hooks


def run(url: str, *, duration: float = 4.0, period_ms: float = 500.0,
        schedule: dict[float, tuple[float, float]] | None = None) -> Any:
    import ns3_side
    from ns3_side._cpp import load

    ns, _ = load()
    paths = build(ns, duration=duration)
    with ns3_side.SimClient(url, name="two_paths_loss") as gw:
        attach(gw, paths, DEFAULT_SCHEDULE if schedule is None else schedule,
               period_ms=period_ms)
        gw.run(until=duration)
    ns.Simulator.Destroy()
    return gw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="tcp://127.0.0.1:7700")
    parser.add_argument("--duration", type=float, default=4.0, help="sim seconds")
    parser.add_argument("--period-ms", type=float, default=500.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    gw = run(args.url, duration=args.duration, period_ms=args.period_ms)
    print(f"reports sent {gw.reports_sent}")


if __name__ == "__main__":
    main()
