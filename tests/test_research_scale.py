"""Experiments at research scale (issue #18): several stations in one simulation.

Root-only (``require_netns``) and needs the ns3 wheel. Each test removes every
namespace, TAP and process it made, also when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import require_netns
from test_dataplane import leftovers, require_ns3_wheel

from ns3_side.lab.dataplane import DataPlane
from ns3_side.lab.paths import p2p, wifi


def _backup(netns: str, endpoint: int = 2) -> bool:
    out = subprocess.run(["ip", "-n", netns, "mptcp", "endpoint", "show"], capture_output=True,
                         text=True, check=True).stdout
    line = next(x for x in out.splitlines() if f" id {endpoint} " in f" {x} ")
    return " backup" in line


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_two_stations_each_hand_over_at_its_own_crossing(tmp_path: Path) -> None:
    """Two stations in one simulation, each with its own namespaces, gateway session and
    RSSI policy: the faster one crosses -80 dBm first and only its WLAN endpoint turns
    backup; the slower one's follows at its own, later crossing."""
    require_netns()
    require_ns3_wheel()
    from ns3_side.lab.handover import POLICY, _Server

    dp = DataPlane([p2p(5, 10), wifi(30, 4.0)], more_stations=[[p2p(5, 10), wifi(30, 1.6)]],
                   scenario=1, duration=14.0)
    tmp = tempfile.mkdtemp(prefix="ipcgw-rs-")
    servers: list[_Server] = []
    try:
        dp.build()
        for k in (1, 2):
            servers.append(_Server(dp.station(k).client, f"fifo://{tmp}/gw{k}", POLICY,
                                   tmp_path / f"server{k}.log"))
        gw = [{"url": s.url, "path_id": 2, "threshold_dbm": -80.0} for s in servers]
        dp.start(gw[0], station_gateways=gw[1:])
        t0 = time.monotonic()
        flipped: dict[int, float] = {}
        while dp.running and len(flipped) < 2 and time.monotonic() - t0 < 16:
            for k in (1, 2):
                if k not in flipped and _backup(dp.station(k).client):
                    flipped[k] = time.monotonic()
                    assert k == 1 or 1 in flipped, "the slow station flipped first"
                    if k == 1:
                        assert not _backup(dp.station(2).client)
            time.sleep(0.1)
        dp.check()
        crossing = {m["station"]: m["mono"] for m in dp.marks if m["what"] == "model_crossing"}
        assert set(flipped) == {1, 2} and set(crossing) == {1, 2}, (flipped, crossing)
        for k in (1, 2):  # after its own crossing, within the two filters' delay
            assert 0 <= flipped[k] - crossing[k] < 2.5, (k, flipped, crossing)
        assert crossing[2] - crossing[1] > 3.0  # (44 - 30) / 1.6 vs / 4 s
        nodes = {r["station"]: r["node"] for r in dp.reports}
        assert nodes[1] != nodes[2], nodes  # each station reports with its own node id
        assert dp.last is not None and len(dp.last["stations"]) == 2
    finally:
        for s in servers:
            s.stop()
        dp.down()
        shutil.rmtree(tmp, ignore_errors=True)
    assert not leftovers(dp.prefix, dp)


def test_dataplane_run_takes_stations_and_spaces_their_walks() -> None:
    from click.testing import CliRunner

    from ns3_side.lab.cli import dataplane
    from ns3_side.lab.dataplane import station_copies

    assert "--stations" in CliRunner().invoke(dataplane, ["run", "--help"]).output
    bad = CliRunner().invoke(dataplane, ["run", "--stations", "0"])
    assert bad.exit_code == 2 and "--stations" in bad.output
    more = station_copies([p2p(5, 10), wifi(30, 2)], 3, spacing_m=4)
    assert [[p.start_m for p in st if p.kind == "wifi"] for st in more] == [[34.0], [38.0]]
    assert all(st[0] == p2p(5, 10) for st in more)


TINY = {
    "name": "tiny", "repetitions": 2, "seed": 3, "timeout_s": 30,
    "policies": ["kernel", "ipcgw_bench.experiments.nowhere:NoPolicy"], "transports": ["unix"],
    "setup": [{"name": "clean", "paths": [{"rate_mbit": 20}, {"rate_mbit": 20}]}],
    "workload": [{"kind": "file", "sizes": ["64K"]}],
}


def _outcome(out: Path) -> dict[str, str]:
    from ipcgw_bench.experiments.report import load_results

    return {r["key"]: r["status"] for r in load_results(out)}


@pytest.mark.netns
@pytest.mark.slow
def test_matrix_on_a_local_dask_cluster_gives_the_sequential_report(tmp_path: Path) -> None:
    """Two worker processes on loopback run a tiny matrix: same cells, same statuses and
    the same report sections as the sequential run; each cell records its worker."""
    require_netns()
    try:
        import distributed
    except ImportError:  # the [cluster] extra; CI installs it and must not skip this
        if os.environ.get("IPCGW_REQUIRE_DASK") == "1":
            pytest.fail("IPCGW_REQUIRE_DASK=1 but dask.distributed is not installed ([cluster] extra)")
        pytest.skip("needs the [cluster] extra (dask[distributed])")
    from ipcgw_bench.experiments.config import parse
    from ipcgw_bench.experiments.report import build_report
    from ipcgw_bench.experiments.runner import run_experiment
    from netns_helpers import require_nft
    from pyroute2 import netns

    require_nft()
    prefix = "ixd"
    before = {n for n in netns.listnetns() if n.startswith(prefix)}
    exp = parse(TINY)
    seq, par = tmp_path / "seq", tmp_path / "dask"
    run_experiment(exp, seq, prefix=prefix)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        run_experiment(exp, par, prefix=prefix, scheduler=client)
    assert _outcome(par) == _outcome(seq) and len(_outcome(seq)) == 4
    recs = [json.loads(x) for x in (par / "results.jsonl").read_text().splitlines()]
    assert all(r.get("worker", "").startswith("tcp://127.0.0.1:") for r in recs)
    a, b = build_report(seq).read_text(), build_report(par).read_text()
    heads = [line for line in a.splitlines() if line.startswith("#")]
    assert heads == [line for line in b.splitlines() if line.startswith("#")]
    assert "nowhere" in b  # the failed cells' reasons
    after = {n for n in netns.listnetns() if n.startswith(prefix)}
    assert after <= before, f"namespaces left behind: {sorted(after - before)}"


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_matrix_cell_with_two_stations_reports_each_station(tmp_path: Path) -> None:
    """An experiment setup with ``stations = 2``: one simulation, two namespace pairs,
    a policy server and a transfer per station; the record has both stations' own
    transfer, losses and handover, station 2 (5 m further out) handing over later."""
    require_netns()
    require_ns3_wheel()
    from ipcgw_bench.experiments.config import parse
    from ipcgw_bench.experiments.report import build_report
    from ipcgw_bench.experiments.runner import run_experiment
    from pyroute2 import netns

    prefix = "ixs"
    before = {n for n in netns.listnetns() if n.startswith(prefix)}
    exp = parse({
        "name": "two-stations", "repetitions": 1, "timeout_s": 90, "policies": ["rssi"],
        "transports": ["unix"],
        "setup": [{"name": "ns3x2", "dataplane": "ns3", "stations": 2, "station_spacing_m": 6,
                   "hold_s": 12, "paths": ["cell:rate=5,delay=10", "wifi:start=34,speed=2"]}],
        "workload": [{"kind": "file", "sizes": ["2M"]}]})
    out = tmp_path / "exp"
    run_experiment(exp, out, prefix=prefix)
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "ok", rec["reason"]
    one, two = rec["stations"]
    assert (one["station"], two["station"]) == (1, 2)
    for st in (one, two):
        assert st["time_s"] > 0 and st["bytes"] == 2 * 1024 * 1024, st
        assert st["p2_lost_pkts"] is not None and st["lost_pkts"] is not None, st
    assert rec["time_s"] == one["time_s"]  # station 1 at the top level
    # 34 m -> -80 dBm at ~44 m: station 1 at ~5 s, station 2 (40 m) ~3 s earlier
    assert one["handover_sim_s"] is not None and two["handover_sim_s"] is not None, rec
    assert two["handover_sim_s"] < one["handover_sim_s"] - 1.5, (one, two)
    md = build_report(out).read_text()
    assert "## Per station" in md and "| ns3x2 | file:2M | rssi/unix | 2 | 1 |" in md
    after = {n for n in netns.listnetns() if n.startswith(prefix)}
    assert after <= before, f"namespaces left behind: {sorted(after - before)}"
