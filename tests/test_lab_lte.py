"""The real LTE path kind (ns-3 LENA) of the data plane, and the ``cell`` stand-in's rename.

The first tests need neither root nor ns-3. The live test needs root and the
ns3 wheel (skips, or fails under IPCGW_REQUIRE_NETNS=1 / IPCGW_REQUIRE_NS3=1,
like tests/test_dataplane.py, whose fixture it uses: every data plane is torn
down and checked for leftover namespaces, TAPs and processes even when the
test fails). LTE costs real time: the eNB and UE run 1 ms subframes even
idle (~15 % of a core) and ~2.5-4 % per Mbit/s on top, so the live test uses
6 resource blocks (1.4 MHz), which caps the LTE path at a few Mbit/s.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from test_dataplane import dataplanes, require_ns3_wheel  # noqa: F401  (fixture)

from ns3_side.lab.dataplane import DataPlane, DataplaneError
from ns3_side.lab.paths import (
    FOR_GOOD,
    LTE_UE_ADDR,
    PathConfig,
    cell,
    lost_for_good,
    lte,
    p2p,
    wifi,
)

# ------------------------------------------------------------------ no root needed


def test_lte_and_cell_specs_parse() -> None:
    """``cell`` is the p2p stand-in that ``lte`` used to be; ``lte`` is the model, whose
    keys are distance/rb/delay/queue/speed (no rate: the model decides it)."""
    assert PathConfig.parse("cell") == cell()
    c = PathConfig.parse("cell:rate=5,delay=30")
    assert (c.kind, c.rate_mbit, c.delay_ms) == ("cell", 5, 30) and c.queue >= 50
    default = PathConfig.parse("lte")
    assert default == lte() and default.kind == "lte"
    assert (default.lte_distance_m, default.lte_rb, default.delay_ms) == (100.0, 25, 10.0)
    pc = PathConfig.parse("lte:distance=500,rb=15,delay=5,queue=40")
    assert (pc.lte_distance_m, pc.lte_rb, pc.delay_ms, pc.queue) == (500.0, 15, 5.0, 40)
    assert PathConfig.from_json(pc.to_json()) == pc
    assert PathConfig.parse("lte:speed=30").speed_mps == 30  # the UE drives away
    for bad in ("lte:rate=5", "lte:rb=7", "lte:rb=6.5", "lte:distance=0", "lte:mode=x",
                "cell:distance=5"):
        with pytest.raises(ValueError):
            PathConfig.parse(bad)


def test_lte_losses_count_as_lost_for_good() -> None:
    causes = {"rlc_ul_buffer": 3, "rlc_dl_buffer": 1, "ue_nas_refused": 2, "queue": 4,
              "tap_write": 1, "phy_rx_error": 9}
    assert lost_for_good(causes) == 11  # phy_* are link-level attempts, not losses


def test_one_lte_path_per_simulation() -> None:
    """The EPC has one UE address for the client namespace, and stations share server
    addresses a single PGW could not tell apart: refused before anything is built."""
    with pytest.raises(DataplaneError, match="at most one lte path"):
        DataPlane([lte(), lte()])
    with pytest.raises(DataplaneError, match="at most one lte path"):
        DataPlane([p2p(), lte()], more_stations=[[p2p(), lte()]])
    dp = DataPlane([p2p(), lte()])
    assert dp.client_addr(2) == LTE_UE_ADDR and dp.client_addr(1) == "10.0.1.1"
    assert dp.testbed.lte_paths == (2,)


# ------------------------------------------------------------------ real ns-3, real kernel


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_p2p_and_lte_ping_mptcp_signal_and_losses(
        dataplanes: list[DataPlane]) -> None:  # noqa: F811
    """Path 1 p2p 5 Mbit/s, path 2 LTE (6 RBs, SGi 10 ms, a 20-frame RLC buffer).

    The bearer comes up; ping from the UE address crosses the EPC (RTT > the SGi
    round trip); one MPTCP connection started on path 1 gets its second subflow
    from 7.0.0.2 (scenario 1's endpoint) through LTE, and both carry data; the
    progress line has RSRP/SINR for path 2; the small RLC buffer overflows under
    TCP, counted as ``rlc_ul_buffer``, and the kernel retransmits on that subflow.
    """
    from ns3_side.lab.probe import ping
    from ns3_side.lab.traffic import Bulk, PathSampler

    began = time.monotonic()
    dp = DataPlane([p2p(5, 10), lte(rb=6, queue_packets=20)], scenario=1)
    dataplanes.append(dp)
    dp.up()
    assert dp.client_addr(2) == LTE_UE_ADDR
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (dp.last and dp.last["lte_ready_s"].get("2")):
        time.sleep(0.1)
    assert dp.last is not None and dp.last["lte_ready_s"]["2"] is not None, dp.last

    rtts = ping(dp.client, LTE_UE_ADDR, dp.server_addr(2), count=8, interval=0.2)
    assert len(rtts) >= 7, f"{len(rtts)} of 8 echoes over LTE"
    assert 20.0 < statistics.median(rtts) < 80.0, rtts  # SGi 2 x 10 ms + radio

    sampler = PathSampler(dp.client, {dp.client_addr(1): 1, LTE_UE_ADDR: 2},
                          interval=0.5).start()
    with Bulk(dp.client, dp.server, dp.server_addr(1)):
        time.sleep(7)
    time.sleep(0.6)
    sampler.stop()
    dp.check()
    assert sampler.error is None
    rates = sampler.rate_between(2.0, 7.5)
    assert rates[1] > 1.0 and rates[2] > 0.3, f"both paths carry: {rates}"

    last = dp.last
    assert last is not None and last["lag"] < 0.25, last
    assert -120.0 < last["rsrp_dbm"]["2"] < -30.0 and last["sinr_db"]["2"] > 0.0, last
    assert last["lte_samples"]["2"] >= 50  # 10 a second
    assert last["lte_rlc_hooks"]["2"] == 2  # UE and eNB RLC buffers both counted
    assert last["delivered"][1][0] > 100 and last["delivered"][1][1] > 500, last["delivered"]
    radio, sgi = last["losses"][1]
    assert set(radio) | set(sgi) <= set(FOR_GOOD), last["losses"]
    assert radio.get("rlc_ul_buffer", 0) > 0, last["losses"]
    assert sampler.rows[-1]["retrans"][2] > 0, sampler.rows[-1]["retrans"]
    assert time.monotonic() - began < 60


def test_experiment_subflows_on_the_ue_address_count_for_the_lte_path() -> None:
    """An experiment names a subflow's path by its client address; the UE's 7.0.0.2 is
    not 10.0.<path>.1, so the setup's own addresses decide."""
    from bench.experiments.workloads import subflow_measures

    stats = {"subflows": [{"daddr": "10.0.1.1", "bytes_sent": 100, "total_retrans": 1},
                          {"daddr": LTE_UE_ADDR, "bytes_sent": 50, "total_retrans": 2}]}
    got = subflow_measures(stats, 2, {"10.0.1.1": 1, LTE_UE_ADDR: 2})
    assert (got["p1_bytes"], got["p2_bytes"], got["p2_retrans"]) == (100, 50, 2)
    assert subflow_measures(stats, 2)["p2_bytes"] == 0  # what the address rule alone sees


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_a_moving_ue_reports_rsrp_and_sinr_through_the_gateway(
        dataplanes: list[DataPlane], tmp_path: Any) -> None:  # noqa: F811
    """With a gateway, the LTE path's UE reports ``rsrp_dbm`` / ``sinr_db`` (path 1, at
    most 10/s, stamped) beside the WiFi station's RSSI (path 2), and its RSRP falls as it
    drives away from the eNB (``lte:speed=``, 100 -> ~400 m)."""
    from ns3_helpers import Server, dump_reports

    from ipcgw.testing import fresh_url
    from ns3_side.lab.probe import ping

    dp = DataPlane([lte(distance_m=100, rb=6, speed_mps=60), wifi(10)], scenario=1,
                   duration=6.0)
    dataplanes.append(dp)
    dp.build()
    with Server(fresh_url("unix", tmp_path), tmp_path, netns=dp.client) as server:
        dp.start({"url": server.url, "path_id": 2})
        # lte as path 1: a socket bound to no address reaches path 1's server through the
        # EPC (the main table's route), as a connection to server_addr(1) starts there
        unbound = ping(dp.client, "0.0.0.0", dp.server_addr(1), count=4, interval=0.2)
        dp.wait(20)
        rows = dump_reports(server.url)
    assert len(unbound) >= 3, unbound
    lte_rows = [(t, m) for t, p, m, _ in rows if p == 1]
    assert len(lte_rows) >= 30, len(lte_rows)  # ~10/s over 6 s
    assert all("host_mono" in m and m["sinr_db"] > 0 for _, m in lte_rows)
    early = statistics.mean(m["rsrp_dbm"] for t, m in lte_rows if t < 1.5)
    late = statistics.mean(m["rsrp_dbm"] for t, m in lte_rows if t > 4.5)
    assert early - late > 6, (early, late)  # > 2x the distance
    assert any("rssi_dbm" in m for _, p, m, _ in rows if p == 2)
