"""The namespace testbed: up, idempotent up, status, failure cleanup, down."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from conftest import require_netns, unique
from netns_helpers import exchange, mptcp_pair, require_nft, testbeds

from ipcgw.testbed import EndpointSpec, PathSpec, Testbed, TestbedError

__all__ = ["testbeds"]


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_up_is_idempotent_and_status_tells_all(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds(scenario=1, server_pm="userspace")
    first = tb.status()
    tb.up()
    tb.up()
    again = tb.status()
    assert first == again
    cli, srv = again["client"], again["server"]
    assert cli["addresses"] == ["eth1 10.0.1.1/24", "eth2 10.0.2.1/24"]
    assert srv["addresses"] == ["eth1 10.0.1.2/24", "eth2 10.0.2.2/24"]
    assert (cli["path_manager"], srv["path_manager"]) == ("kernel", "userspace")
    assert cli["limits"] == {"subflows": 8, "add_addr_accepted": 8}
    assert [(e["id"], e["addr"], e["flag_names"]) for e in cli["endpoints"]] == [
        (2, "10.0.2.1", ["subflow"])]
    assert srv["endpoints"] == []
    with mptcp_pair(tb, port=5501) as (c, s):
        exchange(c, s)


def test_scenario2_and_custom_endpoints(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds(scenario=2, client_endpoints=[EndpointSpec(1, 1, "subflow"),
                                                EndpointSpec(2, 2, "subflow,backup")])
    st = tb.status()
    assert [(e["id"], e["flag_names"]) for e in st["server"]["endpoints"]] == [(2, ["signal"])]
    assert [(e["id"], e["flag_names"]) for e in st["client"]["endpoints"]] == [
        (1, ["subflow"]), (2, ["subflow", "backup"])]


def test_shaping_and_loss_are_installed(testbeds: Callable[..., Testbed]) -> None:
    require_nft()
    tb = testbeds(paths=[PathSpec(rate_mbit=20), PathSpec(rate_mbit=5, loss_pct=1.5)])
    qdisc = subprocess.run(["tc", "-n", tb.client, "qdisc", "show", "dev", "eth2"],
                           capture_output=True, text=True, check=True).stdout
    assert "tbf" in qdisc and "5Mbit" in qdisc
    rules = subprocess.run(["ip", "netns", "exec", tb.server, "nft", "list", "ruleset"],
                           capture_output=True, text=True, check=True).stdout
    assert 'iifname "eth2"' in rules and "numgen random mod 1000000 < 15000" in rules
    assert 'iifname "eth1"' not in rules
    # reconcile to unshaped, lossless
    tb.paths = [PathSpec(), PathSpec()]
    tb.up()
    qdisc = subprocess.run(["tc", "-n", tb.client, "qdisc", "show", "dev", "eth2"],
                           capture_output=True, text=True, check=True).stdout
    assert "tbf" not in qdisc
    rules = subprocess.run(["ip", "netns", "exec", tb.server, "nft", "list", "ruleset"],
                           capture_output=True, text=True, check=True).stdout
    assert "numgen" not in rules


def test_failed_up_removes_what_it_made() -> None:
    require_netns()
    tb = Testbed(prefix=unique("ipt"), paths=[PathSpec(loss_pct=150.0), PathSpec()])
    with pytest.raises(TestbedError, match="loss_pct"):
        tb.up()
    assert tb.client not in netns_names() and tb.server not in netns_names()
    tb.down()  # idempotent on nothing


def test_down_removes_everything_and_prefixes_do_not_collide(
        testbeds: Callable[..., Testbed]) -> None:
    a = testbeds(scenario=1)
    b = testbeds(scenario=2)
    assert {a.client, a.server, b.client, b.server} <= netns_names()
    a.down()
    assert not {a.client, a.server} & netns_names()
    assert {b.client, b.server} <= netns_names()
    assert not a.exists() and b.exists()
    assert a.status()["client"] == {"netns": a.client, "exists": False}


def test_bad_configuration_is_refused_early() -> None:
    with pytest.raises(ValueError):
        Testbed(prefix="x", client_pm="fancy")
    with pytest.raises(ValueError):
        Testbed(prefix="a/b")
    with pytest.raises(ValueError):
        Testbed.scenario(3)
