"""The lab's knobs: ns-3 defaults, any attribute of a path's objects, the station's
mobility and rate manager — from PathConfig, ``--path``, ``--wifi``, ``--ns3-default``
and experiment files; refused with the name when wrong, visible in ns-3 when right.
"""

from __future__ import annotations

import itertools
import re
import statistics
import time
from typing import Any

import pytest
from test_dataplane import dataplanes, require_ns3_wheel  # noqa: F401 (fixture)

from ns3_side.lab.dataplane import DataPlane, DataplaneError
from ns3_side.lab.paths import PathConfig, cell, wifi

# ------------------------------------------------------------------ no ns-3 needed


def test_wifi_options_parse_from_the_cli_syntax_and_onto_a_config() -> None:
    pc = PathConfig.parse("wifi:start=20,speed=2,mobility=bounce,end=45,rate_manager=minstrel,"
                          "phy.RxNoiseFigure=9,queue.MaxDelay=200ms")
    assert (pc.mobility, pc.end_m, pc.rate_manager) == ("bounce", 45.0, "minstrel")
    assert pc.extra == {"phy.RxNoiseFigure": "9", "queue.MaxDelay": "200ms"}
    way = PathConfig.parse("wifi:mobility=waypoints,way=0/10/0;5/40/0;9/40/20")
    assert way.waypoints == [[0, 10, 0], [5, 40, 0], [9, 40, 20]]
    more = wifi(30, 2, extra={"mac.Ssid": "x"}).with_options("rate_manager=ideal,phy.A=1")
    assert (more.start_m, more.rate_manager) == (30, "ideal")
    assert more.extra == {"mac.Ssid": "x", "phy.A": "1"}  # added, not replaced
    assert PathConfig.from_json(pc.to_json()) == pc  # reaches the simulation as JSON
    assert PathConfig.parse("p2p:device.Mtu=1400,error_model.ErrorRate=0.1").extra


@pytest.mark.parametrize(("spec", "words"), [
    ("wifi:mobility=fly", "mobility must be one of"),
    ("wifi:rate_manager=fastest", "rate_manager must be one of"),
    ("wifi:mobility=waypoints", "mobility=waypoints needs waypoints"),
    ("wifi:mobility=waypoints,way=5/1/0;1/2/0", "distinct times >= 0 in order"),
    ("wifi:way=0/1/0", "only with mobility=waypoints"),
    ("wifi:mobility=waypoints,way=0/1", "way wants T/X/Y;T/X/Y"),
    ("wifi:mobility=bounce,speed=0", "needs speed_mps > 0"),
    ("wifi:mobility=bounce,start=20,end=20,speed=1", "end_m != start_m"),
    ("p2p:rate_manager=ideal", "bad path option 'rate_manager=ideal'"),
    ("p2p:phy.RxNoiseFigure=9", "OBJECT one of device, channel, queue, error_model"),
    ("wifi:radio.TxPowerStart=3", "OBJECT one of device, phy,"),
    ("lte:phy.TxPower=40", "a lte path takes no per-object ns-3 attributes"),
])
def test_bad_options_are_refused_naming_them(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        PathConfig.parse(spec)


def test_bounce_covers_the_run_between_its_turning_points() -> None:
    from ns3_side.lab.options import bounce_waypoints

    pts = bounce_waypoints(10, 20, 2.0, 12.0)
    assert pts[:3] == [(0.0, 10, 0.0), (5.0, 20, 0.0), (10.0, 10, 0.0)] and pts[-1][0] >= 12


def test_cli_and_experiment_files_refuse_bad_knobs_with_the_option_named(tmp_path: Any) -> None:
    from click.testing import CliRunner
    from ipcgw_bench.experiments.config import ConfigError, parse

    from ns3_side.lab.cli import dataplane, experiment

    runner = CliRunner()
    bad = runner.invoke(dataplane, ["run", "--ns3-default", "WifiMacQueue::MaxDelay=1s"])
    assert bad.exit_code == 2 and "--ns3-default" in bad.output and "ns3::Type::Attribute" \
        in bad.output
    bad = runner.invoke(experiment, ["handover", "--wifi", "mobility=teleport"])
    assert bad.exit_code == 2 and "--wifi" in bad.output and "mobility must be one of" \
        in bad.output
    base = {"name": "x", "workload": [{"kind": "file", "sizes": ["64K"]}]}
    with pytest.raises(ConfigError, match="setup 1 path 2: rate_manager must be one of"):
        parse({**base, "setup": [{"dataplane": "ns3", "paths": [
            "cell", {"kind": "wifi", "rate_manager": "best"}]}]})
    with pytest.raises(ConfigError, match="ns3_defaults is a table of ns3::Type::Attribute"):
        parse({**base, "setup": [{"dataplane": "ns3", "ns3_defaults": {"MaxDelay": "1s"}}]})
    ok = parse({**base, "setup": [{"dataplane": "ns3", "paths": ["cell", "wifi:mobility=bounce,"
                                                                 "speed=1,end=40"],
                                   "ns3_defaults": {"ns3::WifiMacQueue::MaxDelay": "200ms"}}]})
    assert ok.setups[0].ns3_defaults == {"ns3::WifiMacQueue::MaxDelay": "200ms"}


# ------------------------------------------------------------ ns-3 in this process


@pytest.mark.ns3
def test_mobility_models_move_the_station_as_configured() -> None:
    from ns3_helpers import require_ns3

    from ns3_side.lab.options import install_mobility

    ns = require_ns3()
    nodes = ns.NodeContainer()
    nodes.Create(3)
    configs = [wifi(10, 4, mobility="bounce", end_m=20),
               PathConfig("wifi", mobility="waypoints", waypoints=[[0, 10, 0], [5, 40, 0],
                                                                   [10, 40, 30]]),
               wifi(10, 5, mobility="random_walk", end_m=30)]
    mobs = [install_mobility(ns, nodes.Get(k), pc, 20.0) for k, pc in enumerate(configs)]
    seen: list[list[tuple[float, float]]] = [[], [], []]
    try:
        for t in [0.5 * k for k in range(1, 31)]:
            ns.Simulator.Stop(ns.Seconds(0.5))
            ns.Simulator.Run()
            for k, mob in enumerate(mobs):
                p = mob.GetPosition()
                seen[k].append((float(p.x), float(p.y)))
            if t == 2.5:
                assert seen[0][-1][0] == pytest.approx(20.0)  # the far turning point
                assert seen[1][-1][0] == pytest.approx(25.0)  # halfway from 10 to 40
            if t == 5.0:
                assert seen[0][-1][0] == pytest.approx(10.0)  # back
            if t == 7.5:
                assert seen[1][-1] == pytest.approx((40.0, 15.0))
    finally:
        ns.Simulator.Destroy()
    assert all(9.999 <= x <= 20.001 for x, _ in seen[0])
    walk = seen[2]
    assert all(0 <= x <= 30 and -15 <= y <= 15 for x, y in walk)
    steps = [abs(b[0] - a[0]) + abs(b[1] - a[1]) for a, b in itertools.pairwise(walk)]
    assert statistics.mean(steps) > 0.5, "the random walk should move"


# ------------------------------------------------------- root: the real data plane


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_attributes_mobility_and_rate_manager_reach_the_simulation(
        dataplanes: list[DataPlane]) -> None:  # noqa: F811
    """The AP transmits 10 dB weaker than the model assumes (ap_phy.TxPowerStart/End=6):
    the station's measured RSSI sits 10 dB under the propagation model's; the station
    bounces between 10 and 20 m; Minstrel picks the rate and the path carries pings."""
    from ns3_side.lab.probe import ping

    station = wifi(10, 4).with_options("mobility=bounce,end=20,rate_manager=minstrel,"
                                       "ap_phy.TxPowerStart=6,ap_phy.TxPowerEnd=6")
    seen: list[dict[str, Any]] = []
    dp = DataPlane([cell(5, 10), station], scenario=1, progress_s=0.25,
                   on_progress=seen.append,
                   ns3_defaults={"ns3::WifiMacQueue::MaxDelay": "200ms"})
    dataplanes.append(dp)
    dp.up()
    rtts = ping(dp.client, dp.client_addr(2), dp.server_addr(2), count=20, interval=0.25)
    time.sleep(max(0.0, 8.0 - float(seen[-1]["sim"])) if seen else 4.0)
    dp.check()
    assert len(rtts) >= 15, f"{len(rtts)} of 20 echoes over the minstrel-managed WiFi path"
    dist = [float(m["distance"]["2"]) for m in seen if m.get("distance")]
    assert max(dist) > 19 and min(dist[len(dist) // 2:]) < 12, dist  # went out and came back
    assert all(9.5 <= d <= 20.5 for d in dist), dist
    gaps = [float(m["rssi"]["2"]) - float(m["model_rssi"]["2"]) for m in seen
            if m.get("rssi", {}).get("2") is not None and m.get("model_rssi", {}).get("2")]
    assert gaps and statistics.median(gaps) == pytest.approx(-10.0, abs=1.0), gaps


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
@pytest.mark.parametrize(("paths", "defaults", "words"), [
    (["p2p:queue.MaxSise=10p"], {}, "path 1: queue.MaxSise: ns3::DropTailQueue<Packet> has no "
                                    "attribute 'MaxSise' (it has: MaxSize"),
    (["p2p:device.DataRate=fast"], {}, "path 1: device.DataRate='fast': not a valid "
                                       "ns3::DataRateValue"),
    (["p2p"], {"ns3::WifiMacQueue::MaxDelay": "soon"}, "ns3::WifiMacQueue::MaxDelay='soon': "
                                                       "not a valid ns3::TimeValue"),
])
def test_a_wrong_ns3_name_or_value_is_one_line_naming_it(
        dataplanes: list[DataPlane], paths: list[str], defaults: dict[str, str],  # noqa: F811
        words: str) -> None:
    dp = DataPlane([PathConfig.parse(p) for p in paths], ns3_defaults=defaults)
    dataplanes.append(dp)
    with pytest.raises(DataplaneError) as info:
        dp.up()
    first = str(info.value).splitlines()[0]
    assert words in first, str(info.value)
    assert "Break" not in str(info.value)  # not a backtrace of an aborted simulation

