"""Kernel-PM commands on the real kernel, in a namespace of their own; the legacy
sspi commands and the handler's argument checking."""

from __future__ import annotations

import subprocess
import time

import pytest
from netns_helpers import FakeSession

from ipcgw import sspi
from ipcgw.messages import Bye, Command, Result
from ipcgw.mptcp.genl import KernelError
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.mptcp.pm import PathManager


@pytest.fixture
def pm(netns: str) -> PathManager:
    with PathManager(netns) as p:
        yield p


def test_endpoint_add_show_flags_delete_flush(pm: PathManager, netns: str) -> None:
    # a signal endpoint with a port gets a listener: its address must exist
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.0.3.1/32", "dev", "lo"], check=True)
    ep = pm.add_endpoint("10.0.1.1", id=1, flags="signal")
    assert ep["id"] == 1 and ep["flag_names"] == ["signal"]
    pm.add_endpoint("10.0.2.1", id=2, flags=["subflow"], port=0)
    pm.add_endpoint("10.0.3.1", id=3, flags="signal", port=1234)
    eps = {e["id"]: e for e in pm.endpoints()}
    assert sorted(eps) == [1, 2, 3]
    assert eps[3]["port"] == 1234  # host order both ways
    pm.set_endpoint_flags(2, backup=True)
    assert pm.endpoint(2)["flag_names"] == ["subflow", "backup"]
    pm.set_endpoint_flags(2, backup=False)
    assert pm.endpoint(2)["flag_names"] == ["subflow"]
    pm.delete_endpoint(1)
    assert [e["id"] for e in pm.endpoints()] == [2, 3]
    pm.flush_endpoints()
    assert pm.endpoints() == []


def test_limits(pm: PathManager) -> None:
    assert pm.set_limits(subflows=4, add_addr_accepted=3) == {"subflows": 4,
                                                              "add_addr_accepted": 3}
    assert pm.limits() == {"subflows": 4, "add_addr_accepted": 3}
    pm.set_limits(subflows=2)
    assert pm.limits()["subflows"] == 2


def test_kernel_errors_carry_the_kernels_words(pm: PathManager) -> None:
    with pytest.raises(KernelError) as err:
        pm.set_endpoint_flags(9, backup=True)
    assert err.value.message == "address not found" and err.value.op == "endpoint.set_flags"
    with pytest.raises(KernelError, match="address not found"):
        pm.delete_endpoint(9)
    pm.add_endpoint("10.0.1.1", id=1)
    with pytest.raises(KernelError):
        pm.add_endpoint("10.0.1.1", id=1)  # duplicate
    with pytest.raises(KernelError, match="invalid token"):
        pm.remove(token=1234, id=1)
    assert [e["id"] for e in pm.endpoints()] == [1]  # nothing changed


def test_bad_arguments_never_reach_the_kernel(pm: PathManager) -> None:
    with pytest.raises(ValueError):
        pm.delete_endpoint(300)
    with pytest.raises(ValueError):
        pm.add_endpoint("not-an-address")
    with pytest.raises(ValueError):
        pm.announce(token=-1, addr="10.0.1.1", id=1)


def test_command_round_trip_is_fast(pm: PathManager) -> None:
    pm.limits()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        pm.limits()
    per_call_us = (time.perf_counter() - start) / n * 1e6
    print(f"PathManager.limits() round trip: {per_call_us:.1f} us")
    assert per_call_us < 2000


def test_legacy_sspi_records_flip_endpoint_2(netns: str) -> None:
    handler = MptcpHandler(netns=netns)
    session = FakeSession()
    try:
        handler.pm.add_endpoint("10.0.1.1", id=1, flags="subflow")
        handler.pm.add_endpoint("10.0.2.1", id=2, flags="subflow")
        for kind, backup in ((sspi.SspiType.BACKUP_FLAG_ON, True),
                             (sspi.SspiType.CLEAR_FLAGS, False)):
            msg = sspi.decode(sspi.RECORD.pack(kind, 2))
            assert handler.on_message(session, msg) is None  # sspi wants no reply
            flags = handler.pm.endpoint(2)["flag_names"]
            assert ("backup" in flags) is backup
            assert "backup" not in handler.pm.endpoint(1)["flag_names"]
        handler.on_message(session, sspi.decode(sspi.RECORD.pack(sspi.SspiType.DEL, 1)))
        assert [e["id"] for e in handler.pm.endpoints()] == [2]
        # END is a Bye: the session ends on it (test_session_protocol); the handler never sees it
        assert isinstance(sspi.decode(sspi.RECORD.pack(sspi.SspiType.END, 0)), Bye)
    finally:
        handler.close()


def test_handler_results_and_errors(netns: str) -> None:
    handler = MptcpHandler(netns=netns, programs={"iperf": ["true", "{value}"]})
    s = FakeSession()

    def run(op: str, **args: object) -> Result:
        r = handler.on_message(s, Command(7, op, dict(args)))
        assert isinstance(r, Result) and r.request_id == 7
        return r

    try:
        r = run("endpoint.add", addr="10.0.2.1", id=2, flags="subflow", dev="lo")
        assert r.ok and r.value["id"] == 2 and r.value["ifindex"] == 1
        assert run("endpoint.show").value[0]["addr"] == "10.0.2.1"
        assert run("endpoint.set_flags", id=2, backup=True).ok
        assert run("endpoint.show", id=2).value["flag_names"] == ["subflow", "backup"]
        assert run("limits.set", subflows=3).value["subflows"] == 3
        assert run("limits.get").value["subflows"] == 3
        # kernel refusals: the kernel's words, nothing changed
        r = run("endpoint.set_flags", id=9, backup=True)
        assert not r.ok and r.error == "address not found"
        r = run("pm.remove", token=1, id=2)
        assert not r.ok and r.error == "invalid token"
        # bad requests: clear words, never an exception
        assert "unknown op" in run("endpoint.frobnicate").error
        assert "missing argument(s): id" in run("endpoint.delete").error
        assert "unknown argument(s): bogus" in run("endpoint.delete", id=2, bogus=1).error
        assert not run("endpoint.delete", id="2; rm -rf /").ok
        assert not run("endpoint.set_flags", id=2, backup="yes").ok
        assert not run("pm.announce", token=1, addr="x", id=1).ok
        assert [e["id"] for e in handler.pm.endpoints()] == [2]
        # programs: only the configured one, with a checked integer
        r = run("run.iperf", value=5)
        assert r.ok and r.value["argv"] == ["true", "5"]
        assert "32-bit integer" in run("run.iperf", value="5; reboot").error
        assert "32-bit integer" in run("run.iperf", value=True).error
        assert "no tcpdump program" in run("run.tcpdump", value=1).error
        assert run("endpoint.flush").ok and run("endpoint.show").value == []
    finally:
        handler.close()
