"""The knobs a researcher turns without writing ns-3 code: global ns-3 defaults,
any attribute of a path's objects, the station's movement and its rate adaptation.

Runs in the simulation process (it imports nothing of ns-3 itself: it is handed
``ns``). :mod:`ns3_side.lab.paths` checks the shapes without ns-3 (object names,
mobility, manager names); here ns-3 checks attribute names (``LookupAttributeByName``)
and values. A value is parsed first in a forked child: ns-3's parsers abort the
whole process on a malformed value (``DoubleValue`` "x", ``Time`` "banana"), even
from the ``FailSafe`` setters, and a typo in a config must be an error line that
names the attribute, not a core dump of the simulation.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from ns3_side.lab.paths import RATE_MANAGERS, PathConfig

__all__ = ["OptionError", "apply_defaults", "install_mobility", "rate_manager", "set_attributes"]

_MAX_LEGS = 20_000  # bounce waypoints: enough for a day at walking pace across 10 m


class OptionError(ValueError):
    """A name or value ns-3 refused; the message names it and lists what exists."""


def apply_defaults(ns: Any, defaults: Mapping[str, Any]) -> None:
    """``ns3::Type::Attribute`` defaults, set before anything is built (ns-3 reads them
    when an object is created, so they apply to every path)."""
    for key, value in defaults.items():
        text = str(value)
        tid_name, _, attr = key.rpartition("::")
        info = _lookup_default(ns, key, tid_name, attr)
        _check_value(ns, info, key, text)
        if not ns.Config.SetDefaultFailSafe(key, ns.StringValue(text)):
            raise OptionError(f"ns-3 default {key}={text!r}: the value does not parse "
                              f"(wants a {info.checker.GetValueTypeName()})")


def set_attributes(ns: Any, where: str, objects: Mapping[str, Sequence[Any]],
                   extra: Mapping[str, Any]) -> None:
    """``{"OBJECT.Attribute": value}`` on the path's built objects (``objects`` maps the
    names of :data:`ns3_side.lab.paths.ATTRIBUTE_OF` to the instances)."""
    for key, value in extra.items():
        name, _, attr = key.partition(".")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        targets = objects.get(name) or ()
        if not targets:
            raise OptionError(f"{where}: {key}: this path has no {name} object")
        for obj in targets:
            tid = obj.GetInstanceTypeId()
            info = ns.TypeId.AttributeInformation()
            if not tid.LookupAttributeByName(attr, info):
                raise OptionError(f"{where}: {key}: {tid.GetName()} has no attribute {attr!r} "
                                  f"(it has: {', '.join(_attribute_names(tid))})")
            _check_value(ns, info, f"{where}: {key}", text)
            if not obj.SetAttributeFailSafe(attr, ns.StringValue(text)):
                raise OptionError(f"{where}: {key}={text!r}: {tid.GetName()} refuses it "
                                  f"(wants a {info.checker.GetValueTypeName()})")


def rate_manager(ns: Any, wifi: Any, pc: PathConfig) -> None:
    """Rate adaptation by name; ``constant`` keeps the fixed ``wifi_mode``."""
    if pc.rate_manager == "constant":
        wifi.SetRemoteStationManager("ns3::ConstantRateWifiManager",
                                     "DataMode", ns.StringValue(pc.wifi_mode),
                                     "ControlMode", ns.StringValue("OfdmRate6Mbps"))
    else:
        wifi.SetRemoteStationManager(RATE_MANAGERS[pc.rate_manager])


def install_mobility(ns: Any, node: Any, pc: PathConfig, duration_s: float) -> Any:
    """The station's mobility model (the AP sits at the origin); returns it. ``bounce``
    is precomputed as waypoints for ``duration_s`` (capped), so no Python runs per leg."""
    helper = ns.MobilityHelper()
    if pc.mobility == "line":
        helper.SetMobilityModel("ns3::ConstantVelocityMobilityModel")
        helper.Install(node)
        mob = node.GetObject[ns.ConstantVelocityMobilityModel]()
        mob.SetPosition(ns.Vector(pc.start_m, 0, 0))
        mob.SetVelocity(ns.Vector(pc.speed_mps, 0, 0))
        return mob
    if pc.mobility == "random_walk":
        half = pc.end_m / 2
        helper.SetMobilityModel(
            "ns3::RandomWalk2dMobilityModel",
            "Bounds", ns.RectangleValue(ns.Rectangle(0.0, pc.end_m, -half, half)),
            "Speed", ns.StringValue(f"ns3::ConstantRandomVariable[Constant={pc.speed_mps}]"),
            "Mode", ns.StringValue("Time"), "Time", ns.StringValue("1s"))
        helper.Install(node)
        mob = node.GetObject[ns.MobilityModel]()
        mob.SetPosition(ns.Vector(min(max(pc.start_m, 0.0), pc.end_m), 0, 0))
        return mob
    helper.SetMobilityModel("ns3::WaypointMobilityModel")
    helper.Install(node)
    mob = node.GetObject[ns.WaypointMobilityModel]()
    for t, x, y in (pc.waypoints if pc.mobility == "waypoints" else
                    bounce_waypoints(pc.start_m, pc.end_m, pc.speed_mps, duration_s)):
        mob.AddWaypoint(ns.Waypoint(ns.Seconds(t), ns.Vector(x, y, 0)))
    return mob


def bounce_waypoints(start_m: float, end_m: float, speed_mps: float,
                     duration_s: float) -> list[tuple[float, float, float]]:
    """``start -> end -> start ...`` along x at constant speed, covering ``duration_s``."""
    leg = abs(end_m - start_m) / speed_mps
    legs = min(_MAX_LEGS, math.ceil(duration_s / leg) + 1)
    return [(k * leg, end_m if k % 2 else start_m, 0.0) for k in range(legs + 1)]


def _lookup_default(ns: Any, key: str, tid_name: str, attr: str) -> Any:
    tid = ns.TypeId()
    if not tid_name or not ns.TypeId.LookupByNameFailSafe(tid_name, tid):
        raise OptionError(f"ns-3 default {key!r}: no type {tid_name!r} (write "
                          "ns3::Type::Attribute, e.g. ns3::WifiMacQueue::MaxDelay)")
    info = ns.TypeId.AttributeInformation()
    if not tid.LookupAttributeByName(attr, info):
        raise OptionError(f"ns-3 default {key!r}: {tid_name} has no attribute {attr!r} "
                          f"(it has: {', '.join(_attribute_names(tid))})")
    return info


def _check_value(ns: Any, info: Any, what: str, text: str) -> None:
    """Parse ``text`` with the attribute's checker in a child process: an abort there
    costs the child, and tells us the value is malformed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.signal(signal.SIGABRT, signal.SIG_DFL)  # not cppyy's backtrace: just die
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        try:
            ok = bool(info.checker.CreateValidValue(ns.StringValue(text)))
        except Exception:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OptionError(f"{what}={text!r}: not a valid {info.checker.GetValueTypeName()} "
                          f"(ns-3 cannot parse it)")


def _attribute_names(tid: Any) -> list[str]:
    names: list[str] = []
    while True:
        names += [str(tid.GetAttribute(i).name) for i in range(tid.GetAttributeN())]
        parent = tid.GetParent()
        if parent == tid:
            return sorted(set(names))
        tid = parent
