"""Policies: hook dispatch, the loader, RssiPolicy's filter (unit) and RssiPolicy
flipping endpoint 2 on the real kernel from Reports sent through the handler."""

from __future__ import annotations

from typing import Any

import pytest
from netns_helpers import FakeSession

from ipcgw.messages import Report
from ipcgw.mptcp.events import MptcpEvent
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.mptcp.policy import Policy, RssiPolicy, load_policy


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
