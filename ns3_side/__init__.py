"""ipcgw's client side inside NS-3 simulations (PyPI ``ns3`` bindings).

A minimal script::

    from ns import ns
    import ns3_side

    ...build nodes, WiFi devices, mobility...
    with ns3_side.SimClient("tcp://127.0.0.1:7700") as gw:
        ns3_side.wifi_signal(gw, sta_device, path_id=2, alpha=0.2, min_interval_ms=100)
        gw.run(until=10.0)

Importing this package is cheap; ``ns`` (about 7 s) is imported when the
first SimClient is made.
"""

from __future__ import annotations

from ns3_side._cpp import NsUnavailable
from ns3_side.hooks import (
    Hook,
    drops,
    link_state,
    loss,
    lte_signal,
    queue_drops,
    tcp_cwnd,
    tcp_rtt,
    tcp_socket_path,
    wifi_signal,
)
from ns3_side.simclient import LockstepError, SimClient, SimulationAborted

__all__ = [
    "Hook",
    "LockstepError",
    "NsUnavailable",
    "SimClient",
    "SimulationAborted",
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
