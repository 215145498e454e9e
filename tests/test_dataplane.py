"""The NS-3 data plane against real ns-3 (a child process), a real kernel and real MPTCP.

Root-only tests use ``require_netns`` (skip, or fail under
IPCGW_REQUIRE_NETNS=1) and need the ns3 wheel (skip, or fail under
IPCGW_REQUIRE_NS3=1). Rates are modest: real time on two shared vCPUs is
the scarce resource. Every test ends by checking that nothing is left: no
namespace, no TAP, no simulation or server process.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_netns

from ns3_side.lab.dataplane import DataPlane, SimulationFailed
from ns3_side.lab.paths import PathConfig, cell, p2p, wifi


def require_ns3_wheel() -> None:
    """The simulation runs in a child process: only check that it could import ns."""
    if importlib.util.find_spec("ns") is None:
        if os.environ.get("IPCGW_REQUIRE_NS3") == "1":
            pytest.fail("IPCGW_REQUIRE_NS3=1 but the ns3 wheel is not installed")
        pytest.skip("needs the ns3 wheel")


def _root_routing() -> str:
    return "\n".join(subprocess.run(argv, capture_output=True, text=True).stdout
                     for argv in (["ip", "rule"], ["ip", "route", "show", "table", "all"]))


def leftovers(prefix: str, dp: DataPlane | None = None) -> list[str]:
    """Namespaces, root-namespace TAPs and processes a data plane named ``prefix`` left."""
    found = [f"netns {n}" for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                  text=True).stdout.split() if n.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
              if ": ipdp" in line]
    procs = subprocess.run(["pgrep", "-af", prefix], capture_output=True, text=True).stdout
    found += [f"process {p}" for p in procs.splitlines() if "pgrep" not in p]
    if dp is not None and dp.proc is not None and dp.proc.poll() is None:
        found.append(f"simulation process {dp.proc.pid}")
    return found


@pytest.fixture
def dataplanes() -> Iterator[list[DataPlane]]:
    """Data planes a test makes; each is torn down and checked afterwards, and the
    root namespace's rules and routes are what they were."""
    require_netns()
    require_ns3_wheel()
    made: list[DataPlane] = []
    routing = _root_routing()
    try:
        yield made
    finally:
        for dp in made:
            dp.down()
    for dp in made:
        assert not leftovers(dp.prefix, dp)
    assert _root_routing() == routing


# ------------------------------------------------------------------ no root needed

def test_path_specs_parse_and_queues_are_deliberate() -> None:
    pc = PathConfig.parse("p2p:rate=5,delay=10,loss=0.01,queue=30")
    assert (pc.kind, pc.rate_mbit, pc.delay_ms, pc.loss, pc.queue) == ("p2p", 5, 10, 0.01, 30)
    assert PathConfig.parse("wifi:start=20,speed=2,mode=OfdmRate24Mbps").wifi_mode == \
        "OfdmRate24Mbps"
    assert PathConfig.parse("cell").kind == "cell" and PathConfig.parse("lte").kind == "lte"
    # default queue: the larger of one BDP and 100 ms at the rate, in 1514-byte frames
    assert p2p(100, 50).queue == 826 and p2p(5, 10).queue == 42
    for bad in ("ppp", "p2p:rate", "p2p:colour=red", "p2p:loss=1.5", "p2p:speed=2",
                "wifi:delay=5"):
        with pytest.raises(ValueError):
            PathConfig.parse(bad)
    assert PathConfig.from_json(wifi(5, 1).to_json()) == wifi(5, 1)
    assert cell().delay_ms == 25 and cell().queue >= 50  # the stand-in, a p2p link


def test_cli_reads_like_its_help_and_rejects_bad_paths() -> None:
    from click.testing import CliRunner

    from ns3_side.lab.cli import dataplane, experiment

    runner = CliRunner()
    out = runner.invoke(experiment, ["handover", "--help"]).output
    for option in ("--transport", "--out", "--no-policy", "--duration", "--speed"):
        assert option in out
    bad = runner.invoke(dataplane, ["run", "--path", "p2p:colour=red"])
    assert bad.exit_code == 2 and "bad path option" in bad.output


def test_wifi_detection_threshold_is_an_option() -> None:
    assert wifi().detect_dbm == -92.0  # not ns-3's default (deaf near -82 dBm)
    assert PathConfig.parse("wifi:detect=default").detect_dbm is None
    assert PathConfig.parse("wifi:detect=-85").detect_dbm == -85.0
    with pytest.raises(ValueError, match="detect wants a number"):
        PathConfig.parse("wifi:detect=loud")


def test_handover_refuses_a_bad_policy_spec_naming_the_parameter() -> None:
    from click.testing import CliRunner

    from ns3_side.lab.cli import experiment

    bad = CliRunner().invoke(experiment, ["handover", "--policy",
                                          "ipcgw.mptcp.policy:RssiPolicy?treshold=-78"])
    assert bad.exit_code == 2 and "no parameter 'treshold'; did you mean threshold" in bad.output


def test_down_removes_only_our_stale_temp_folders(tmp_path: Path) -> None:
    """After a kill -9 the controller's /tmp/ipcgw-dp-<prefix>-* stays behind; down
    removes it, but neither follows a symlink nor removes another user's folder."""
    import shutil
    import tempfile

    from click.testing import CliRunner

    from ns3_side.lab.cli import dataplane
    from ns3_side.lab.dataplane import TMP_PREFIX

    prefix = f"ipst{os.getpid() % 10000}"
    base = Path(tempfile.gettempdir())
    ours = base / f"{TMP_PREFIX}{prefix}-abc"
    link = base / f"{TMP_PREFIX}{prefix}-link"
    foreign = base / f"{TMP_PREFIX}{prefix}-theirs"
    target = tmp_path / "keep"
    try:
        ours.mkdir()
        (ours / "sim.json").write_text("{}")
        target.mkdir()
        (target / "file").write_text("x")
        link.symlink_to(target)
        foreign.mkdir()
        if os.geteuid() == 0:
            os.chown(foreign, 65534, 65534)
        result = CliRunner().invoke(dataplane, ["down", "--prefix", prefix])
        assert result.exit_code == 0, result.output
        assert not ours.exists() and str(ours) in result.output
        assert link.is_symlink() and (target / "file").exists()
        assert foreign.exists() == (os.geteuid() == 0)
    finally:
        shutil.rmtree(ours, ignore_errors=True)
        shutil.rmtree(foreign, ignore_errors=True)
        if link.is_symlink():
            link.unlink()


# ------------------------------------------------------------------ real ns-3, real kernel

@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_two_p2p_paths_ping_rtts_and_mptcp_fills_both(dataplanes: list[DataPlane]) -> None:
    """Ping RTT = 2 x delay (within 10 %) per path; one MPTCP connection uses both
    paths (the client kernel's subflow stats) and gets >= 80 % of 5 + 5 Mbit/s."""
    from ns3_side.lab.probe import ping
    from ns3_side.lab.traffic import Bulk, PathSampler

    delays = (10.0, 30.0)
    dp = DataPlane([p2p(5, delays[0]), p2p(5, delays[1])], scenario=1)
    dataplanes.append(dp)
    dp.up()
    for i, delay in enumerate(delays, 1):
        rtts = ping(dp.client, dp.client_addr(i), dp.server_addr(i), count=8, interval=0.1)
        assert len(rtts) >= 7, f"path {i}: {len(rtts)} of 8 echoes answered"
        median = statistics.median(rtts[1:])  # the first one waits for ARP
        assert abs(median - 2 * delay) <= 0.1 * 2 * delay, f"path {i}: rtt {rtts}"
    sampler = PathSampler(dp.client, {dp.client_addr(1): 1, dp.client_addr(2): 2},
                          interval=0.5).start()
    with Bulk(dp.client, dp.server, dp.server_addr(1)):
        time.sleep(9)
    sampler.stop()
    assert sampler.error is None
    rates = sampler.rate_between(3.0, 9.5)
    dp.check()
    assert rates[1] > 1.0 and rates[2] > 1.0, f"both paths carry data: {rates}"
    assert sum(rates.values()) >= 0.8 * 10.0, f"per path Mbit/s: {rates}"
    assert dp.last is not None and dp.last["lag"] < 0.25, dp.last


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_scenario_2_server_signal_endpoint_gets_a_subflow_on_path_2(
        dataplanes: list[DataPlane]) -> None:
    """ADD_ADDR from the server: the client's join leaves through path 2 and both carry."""
    from ns3_side.lab.traffic import Bulk, PathSampler

    dp = DataPlane([p2p(5, 10), p2p(5, 20)], scenario=2)
    dataplanes.append(dp)
    dp.up()
    sampler = PathSampler(dp.client, {dp.client_addr(1): 1, dp.client_addr(2): 2},
                          interval=0.5).start()
    with Bulk(dp.client, dp.server, dp.server_addr(1)):
        time.sleep(6)
    sampler.stop()
    rates = sampler.rate_between(2.0, 6.5)
    dp.check()
    assert rates[1] > 1.0 and rates[2] > 1.0, rates
    assert sum(rates.values()) >= 0.8 * 10.0, rates


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_handover_shortened_policy_moves_traffic_to_lte(tmp_path: Path) -> None:
    """The experiment, 12 s: RSSI crosses -80 dBm, then the WLAN endpoint becomes
    backup, WLAN traffic stops and the LTE stand-in carries the transfer."""
    require_netns()
    require_ns3_wheel()
    from ns3_side.lab.handover import HandoverConfig, run

    prefix = f"ipho{os.getpid() % 10000}"
    cfg = HandoverConfig(transport="fifo", duration=12.0, start_m=30.0, speed_mps=4.0,
                         prefix=prefix)
    try:
        result = run(cfg, tmp_path / "out", echo=None)
    finally:
        assert not leftovers(prefix)
    s = result.summary
    assert s["rssi_crossing_s"] is not None and s["endpoint_backup_s"] is not None, s
    assert s["endpoint_backup_s"] >= s["rssi_crossing_s"] - 0.6, s  # sampled every 0.5 s
    assert s["wlan_mbit_before"] > 3.0, s
    assert s["wlan_mbit_after"] < 0.2 * s["wlan_mbit_before"], s
    assert s["lte_mbit_after"] >= 0.7 * cfg.lte_rate_mbit, s
    for name in ("timeline.csv", "timeline.png", "summary.json", "config.json", "versions.json",
                 "server.log"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert "RssiPolicy" in (tmp_path / "out" / "server.log").read_text()


@pytest.mark.netns
@pytest.mark.ns3
def test_killed_simulation_is_reported_and_leaves_nothing(dataplanes: list[DataPlane]) -> None:
    dp = DataPlane([p2p(5, 5)])
    dataplanes.append(dp)
    dp.up()
    assert dp.proc is not None
    os.kill(dp.proc.pid, signal.SIGKILL)
    with pytest.raises(SimulationFailed, match="killed by signal SIGKILL"):
        dp.wait(10)
    dp.down()
    assert not leftovers(dp.prefix, dp)


@pytest.mark.netns
@pytest.mark.ns3
def test_missed_real_time_limit_kills_with_ns3_message(dataplanes: list[DataPlane]) -> None:
    """The simulation thread blocks 1.5 s: ns-3's own hard-limit error reaches the caller."""
    dp = DataPlane([p2p(5, 5)], hard_limit_ms=100)
    dataplanes.append(dp)
    dp.up(stall=(0.5, 1.5))
    with pytest.raises(SimulationFailed, match="Hard real-time limit exceeded"):
        dp.wait(15)
    dp.down()
    assert not leftovers(dp.prefix, dp)


@pytest.mark.netns
@pytest.mark.ns3
def test_hung_simulation_is_killed_by_the_watchdog(dataplanes: list[DataPlane]) -> None:
    dp = DataPlane([p2p(5, 5)], hard_limit_ms=0, heartbeat_s=2.0)
    dataplanes.append(dp)
    dp.up(stall=(0.5, 120.0))
    with pytest.raises(SimulationFailed, match="no progress"):
        dp.wait(15)
    dp.down()
    assert not leftovers(dp.prefix, dp)


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_error_model_losses_are_counted_per_path_and_only_that_subflow_retransmits(
        dataplanes: list[DataPlane]) -> None:
    """Path 1 has a 2 % RateErrorModel (per packet, both directions): the simulation
    counts ~2 % error-model drops there (within 4 binomial standard deviations) and
    the client kernel retransmits on path 1's subflow; path 2 loses nothing (a deep
    queue, in-flight bounded by the send buffer) and sees no retransmission."""
    import math

    from ns3_side.lab.traffic import Bulk, PathSampler

    dp = DataPlane([p2p(5, 10, loss=0.02), p2p(5, 10, queue_packets=2000)], scenario=1)
    dataplanes.append(dp)
    dp.up()
    sampler = PathSampler(dp.client, {dp.client_addr(1): 1, dp.client_addr(2): 2},
                          interval=0.5).start()
    with Bulk(dp.client, dp.server, dp.server_addr(1), sndbuf=256 * 1024):
        time.sleep(7)
    time.sleep(0.6)
    sampler.stop()
    dp.check()
    assert sampler.error is None and dp.last is not None
    losses, delivered = dp.last["losses"], dp.last["delivered"]
    for side in (0, 1):
        dropped = losses[0][side].get("error_model", 0)
        n = dropped + delivered[0][side]
        assert n > 1000, (side, n)
        tol = 4 * math.sqrt(n * 0.02 * 0.98)
        assert abs(dropped - 0.02 * n) <= tol, f"side {side}: {dropped} of {n} dropped"
        assert losses[1][side] == {}, losses  # path 2: no cause at all
    retrans = sampler.rows[-1]["retrans"]
    assert retrans[1] > 0 and retrans[2] == 0, retrans
