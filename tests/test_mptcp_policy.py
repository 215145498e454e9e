"""Policies: hook dispatch, the loader, RssiPolicy's filter (unit) and RssiPolicy
flipping endpoint 2 on the real kernel from Reports sent through the handler."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import pytest
from netns_helpers import FakeSession

from ipcgw.messages import Report
from ipcgw.mptcp.events import MptcpEvent
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.mptcp.policy import Policy, RssiPolicy, build_policy, load_policy


class FakePM:
    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def set_endpoint_flags(self, id: int, backup: bool, fullmesh: bool = False) -> None:
        self.calls.append((id, backup))


class Recording(Policy):
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def new_connection(self, attrs: dict[str, Any]) -> None:
        self.seen.append(("new_connection", attrs))

    def new_subflow(self, attrs: dict[str, Any]) -> None:
        self.seen.append(("new_subflow", attrs))

    def subflow_priority(self, attrs: dict[str, Any]) -> None:
        self.seen.append(("subflow_priority", attrs))


def report(rssi: float, path: int = 2) -> Report:
    return Report(0.0, path, {"rssi_dbm": rssi})


def test_hooks_are_dispatched_by_event_kind() -> None:
    p = Recording()
    for kind in ("CREATED", "SUB_ESTABLISHED", "SUB_PRIORITY", "CLOSED", "WHATEVER"):
        p.dispatch(MptcpEvent(kind, {"token": 1}))
    assert [name for name, _ in p.seen] == ["new_connection", "new_subflow", "subflow_priority"]


def test_loader() -> None:
    assert isinstance(load_policy("ipcgw.mptcp.policy:RssiPolicy", alpha=0.5), RssiPolicy)
    for bad in ("ipcgw.mptcp.policy", "ipcgw.mptcp.policy:Nope", "ipcgw.messages:Report"):
        with pytest.raises(ValueError):
            load_policy(bad)


def test_rssi_filter_threshold_and_changes_only() -> None:
    p = RssiPolicy()
    pm = FakePM()
    p.bind(pm)  # type: ignore[arg-type]
    p.on_report(report(-70))
    assert pm.calls == [(2, False)] and p.filtered == -70
    p.on_report(report(-95))  # filtered: 0.85*-70 + 0.15*-95 = -73.75
    assert p.filtered == pytest.approx(-73.75) and pm.calls == [(2, False)]
    for _ in range(10):
        p.on_report(report(-95))
    assert p.filtered < -80 and pm.calls == [(2, False), (2, True)]
    p.on_report(Report(0.0, 2, {"snr_db": 30}))  # not the metric: ignored
    p.on_report(Report(0.0, 2, {"rssi_dbm": True}))  # not a number: ignored
    for _ in range(20):
        p.on_report(report(-60))
    assert pm.calls == [(2, False), (2, True), (2, False)]


def test_rssi_hysteresis_and_configuration() -> None:
    p = RssiPolicy(alpha=0.0, threshold_dbm=-75, hysteresis_db=5, wlan_id=7, path_id=1)
    pm = FakePM()
    p.bind(pm)  # type: ignore[arg-type]
    p.on_report(report(-90, path=2))  # other path: ignored
    assert pm.calls == []
    for value, expect in ((-80, [(7, True)]), (-72, [(7, True)]), (-69, [(7, True), (7, False)]),
                          (-74, [(7, True), (7, False)])):
        p.on_report(report(value, path=1))
        assert pm.calls == expect, value
    with pytest.raises(ValueError):
        RssiPolicy(alpha=1.0)


def test_rssi_policy_flips_endpoint_2_on_the_kernel(netns: str) -> None:
    handler = MptcpHandler(policy=RssiPolicy(), netns=netns)
    session = FakeSession()
    try:
        handler.pm.add_endpoint("10.0.1.1", id=1, flags="subflow")
        handler.pm.add_endpoint("10.0.2.1", id=2, flags="subflow")
        for _ in range(3):
            handler.on_message(session, report(-70))
        assert "backup" not in handler.pm.endpoint(2)["flag_names"]
        for _ in range(15):
            handler.on_message(session, report(-95))
        assert handler.pm.endpoint(2)["flag_names"] == ["subflow", "backup"]
        assert handler.pm.endpoint(1)["flag_names"] == ["subflow"]  # LTE untouched
        for _ in range(15):
            handler.on_message(session, report(-60))
        assert handler.pm.endpoint(2)["flag_names"] == ["subflow"]
        assert session.sent == [] and session.posted == []
    finally:
        handler.close()


def test_policy_errors_do_not_escape(netns: str) -> None:
    class Broken(Policy):
        def on_report(self, report: Report) -> None:
            raise RuntimeError("bug in a policy")

    handler = MptcpHandler(policy=Broken(), netns=netns)
    try:
        assert handler.on_message(FakeSession(), report(-90)) is None
        # RssiPolicy on a missing endpoint logs the kernel's refusal and goes on
        rssi = RssiPolicy(alpha=0.0)
        rssi.bind(handler.pm)
        rssi.on_report(report(-90))
        assert rssi.backup is None
    finally:
        handler.close()


# -- issue #20: parameters from a spec, per-station state, link loss, time-constant filter --

SPEC = "ipcgw.mptcp.policy:RssiPolicy"


def test_build_policy_parses_typed_parameters_and_aliases() -> None:
    p = build_policy(f"{SPEC}?threshold=-78&alpha=0.9&endpoints=3:2,5:4&path_id=2"
                     "&on_link_down=false&tau=250")
    assert isinstance(p, RssiPolicy)
    assert (p.threshold_dbm, p.alpha, p.endpoints, p.path_id, p.on_link_down, p.tau_ms) == (
        -78.0, 0.9, {3: 2, 5: 4}, 2, False, 250.0)
    # a TOML table's values are checked the same way, and may be mixed with the query
    q = build_policy(f"{SPEC}?alpha=0.5", {"endpoints": {"7": 4}, "hysteresis_db": 2})
    assert isinstance(q, RssiPolicy) and q.endpoints == {7: 4} and q.hysteresis_db == 2.0
    assert isinstance(load_policy(f"{SPEC}?alpha=0.5", wlan_id=3), RssiPolicy)


@pytest.mark.parametrize(("spec", "args", "words"), [
    (f"{SPEC}?treshold=-78", None, "no parameter 'treshold'; did you mean threshold"),
    (f"{SPEC}?alpah=0.9", None, "did you mean alpha"),
    (f"{SPEC}?alpha=abc", None, "alpha='abc' is not float"),
    (f"{SPEC}?alpha=nan", None, "alpha='nan' is not float"),
    (f"{SPEC}?alpha=1.5", None, "alpha must be in [0, 1)"),
    (f"{SPEC}?wlan_id=2.5", None, "wlan_id='2.5' is not int"),
    (f"{SPEC}?on_link_down=maybe", None, "on_link_down='maybe' is not bool"),
    (f"{SPEC}?alpha=0.5&alpha=0.6", None, "alpha given twice"),
    (f"{SPEC}?threshold=-1&threshold_dbm=-2", None, "threshold_dbm given twice"),
    (f"{SPEC}?alpha", None, "bad parameter 'alpha'"),
    (SPEC, {"alpha": "high"}, "alpha='high' is not float"),
    (SPEC, {"wlan_id": True}, "wlan_id=True is not int"),
    ("ipcgw.mptcp.policy:RsiPolicy", None, "did you mean RssiPolicy"),
    ("ipcgw.messages:Report", None, "not a Policy subclass"),
    ("no_such_module_x:P", None, "cannot be imported"),
    ("RssiPolicy", None, "module:Class"),
])
def test_build_policy_refuses_naming_the_parameter(spec: str, args: dict[str, Any] | None,
                                                   words: str) -> None:
    with pytest.raises(ValueError) as info:
        build_policy(spec, args)
    assert words in str(info.value) and "\n" not in str(info.value)


def station(rssi: float | None, node: int, t: float = 0.0, link: bool | None = None) -> Report:
    metrics: dict[str, Any] = {} if rssi is None else {"rssi_dbm": rssi}
    if link is not None:
        metrics["link_up"] = link
    return Report(t, 2, metrics, node)


def test_two_stations_keep_their_own_filter_and_endpoint() -> None:
    p = build_policy(f"{SPEC}?alpha=0.5&endpoints=3:2,5:4")
    pm = FakePM()
    p.bind(pm)  # type: ignore[arg-type]
    for _ in range(10):  # interleaved: a near station (node 3) and a far one (node 5)
        p.on_report(station(-60, 3))
        p.on_report(station(-95, 5))
    assert pm.calls == [(2, False), (4, True)]  # each acts on its own endpoint, once
    assert p.stations[(None, 3, 2)].filtered == pytest.approx(-60)
    assert p.stations[(None, 5, 2)].filtered == pytest.approx(-95)
    # the same node in two sessions (two simulations) is two stations too
    p.report_from(7, station(-95, 3))
    assert p.stations[(7, 3, 2)].filtered == -95 and p.stations[(None, 3, 2)].filtered == -60
    p.session_closed(7)
    assert (7, 3, 2) not in p.stations


def test_link_down_makes_the_endpoint_backup_at_once() -> None:
    p = RssiPolicy()
    pm = FakePM()
    p.bind(pm)  # type: ignore[arg-type]
    p.on_report(station(-70, 3))
    p.on_report(station(-79, 3))  # filtered still well above -80: nothing
    assert pm.calls == [(2, False)]
    p.on_report(station(None, 3, link=False))  # the station went deaf: no more RSSI
    assert pm.calls == [(2, False), (2, True)]
    assert p.decisions[-1]["why"] == "link down" and p.decisions[-1]["endpoint"] == 2
    p.on_report(station(None, 3, link=True))  # associated again: the next RSSI decides
    assert pm.calls == [(2, False), (2, True)] and p.stations[(None, 3, 2)].filtered is None
    p.on_report(station(-60, 3))
    assert pm.calls == [(2, False), (2, True), (2, False)]
    q = RssiPolicy(on_link_down=False)
    q.bind(FakePM())  # type: ignore[arg-type]
    q.on_report(station(None, 3, link=False))
    assert q.decisions == deque()


def test_time_constant_filter_does_not_depend_on_the_report_rate() -> None:
    """A step from -60 to -95 dBm at t=0 reaches the same value 0.5 s later whether
    reports come every 100 ms or every 1 ms; alpha per report does not."""
    out = {}
    for dt in (0.1, 0.001):
        p = RssiPolicy(tau_ms=500)
        p.bind(FakePM())  # type: ignore[arg-type]
        p.on_report(Report(0.0, 2, {"rssi_dbm": -60.0}))
        n = round(0.5 / dt)
        for k in range(1, n + 1):
            p.on_report(Report(k * dt, 2, {"rssi_dbm": -95.0}))
        out[dt] = p.filtered
    expect = -95 + 35 * math.exp(-1)
    assert out[0.1] == pytest.approx(expect, abs=1e-6) and out[0.001] == pytest.approx(expect)
    per_report = {}
    for n in (5, 500):
        p = RssiPolicy(alpha=0.85)
        p.bind(FakePM())  # type: ignore[arg-type]
        p.on_report(Report(0.0, 2, {"rssi_dbm": -60.0}))
        for k in range(n):
            p.on_report(Report(k, 2, {"rssi_dbm": -95.0}))
        per_report[n] = p.filtered
    assert per_report[5] > -85 and per_report[500] == pytest.approx(-95)


def test_decisions_are_timed_on_the_monotonic_clock() -> None:
    p = RssiPolicy(alpha=0.0)
    p.bind(FakePM())  # type: ignore[arg-type]
    before = time.monotonic()
    p.on_report(Report(3.0, 2, {"rssi_dbm": -90.0, "host_mono": before - 0.25}))
    d = p.decisions[-1]
    assert d["report_mono"] == before - 0.25 and before <= d["decided_mono"] <= d["acked_mono"]
    assert d["report_sim"] == 3.0 and d["backup"] is True and d["filtered_dbm"] == -90.0
