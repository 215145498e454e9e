"""ns3_side against the real ns-3 (PyPI wheel) and real ``ipcgw serve`` processes.

The simulations run in this process (``from ns import ns`` costs ~7 s once);
every server is a child process on a real transport. Skipped without the
wheel unless IPCGW_REQUIRE_NS3=1.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ns3_helpers import Server, dump_reports, require_ns3

from ipcgw.errors import ConnectError
from ipcgw.messages import Event, Report, Result
from ipcgw.sspi import RECORD, SspiType

pytestmark = pytest.mark.ns3


@pytest.fixture(scope="module")
def ns() -> Any:
    return require_ns3()


@pytest.fixture
def sim(ns: Any) -> Iterator[Any]:
    """A fresh simulation; destroyed (and the default simulator restored) after."""
    yield ns
    ns.Simulator.Destroy()
    ns.GlobalValue.Bind("SimulatorImplementationType", ns.StringValue("ns3::DefaultSimulatorImpl"))


def sysv_leftovers(url: str) -> list[str]:
    """SysV queues of this server key, or last used by this process (other tests on the
    host make and remove queues concurrently, so a before/after diff would be flaky)."""
    key = re.match(r"sysv://(0x[0-9a-f]+)", url)
    me = str(os.getpid())
    with open("/proc/sysvipc/msg") as f:
        next(f)
        rows = [line.split() for line in f if line.strip()]
    return [" ".join(r) for r in rows
            if (key and int(r[0]) == int(key.group(1), 16)) or me in (r[5], r[6])]


def url_for(transport: str, tmp: Path) -> str:
    tag = os.urandom(4).hex()
    return {
        "fifo": f"fifo://{tmp}/gw-{tag}",
        "sysv": f"sysv://{0x10000000 + int(tag, 16) % 0x6FFFFFFF:#x}",
        "posixmq": f"posixmq:///ipcgwns3{tag}",
        "tcp": "tcp://127.0.0.1:0",
        "unix": f"unix://{tmp}/gw-{tag}.sock",
        "shm": f"shm:///ipcgwns3{tag}",
    }[transport]


def expected_filtered(raw: list[tuple[float, float, float]], alpha: float,
                      min_interval: float) -> list[tuple[float, float, float]]:
    """What the C++ emitter must send: EWMA over every sample, at most one per interval."""
    out: list[tuple[float, float, float]] = []
    a = b = 0.0
    last = -1e300
    for i, (t, x, y) in enumerate(raw):
        if i == 0:
            a, b = x, y
        else:
            a += alpha * (x - a)
            b += alpha * (y - b)
        if t - last >= min_interval:
            out.append((t, a, b))
            last = t
    return out


# ---------------------------------------------------------------- reports arrive


@pytest.mark.parametrize("transport", ["fifo", "sysv", "tcp", "unix", "posixmq", "shm"])
def test_wifi_reports_arrive_with_values_and_sim_times(sim: Any, tmp_path: Path,
                                                       transport: str) -> None:
    import ns3_side
    from ns3_side.examples import wifi_rssi

    ns = sim
    with Server(url_for(transport, tmp_path), tmp_path) as server:
        scenario = wifi_rssi.build(ns, start_m=10.0, speed=15.0, traffic_pps=50, duration=3.0)
        ap_mac = scenario.ap_device.GetAddress()
        with ns3_side.SimClient(server.url, name=f"test-{transport}") as gw:
            raw: list[tuple[float, float, float]] = []
            truth = gw.own(gw.cpp.WifiSignal())  # ground truth from the same trace source
            truth.FilterFrom(ap_mac)
            truth.fn = lambda t, a, b: raw.append((t, a, b))
            assert truth.Attach(scenario.sta_device.GetPhy())
            raw_hook = ns3_side.wifi_signal(gw, scenario.sta_device, 2, from_address=ap_mac)
            filtered = ns3_side.wifi_signal(gw, scenario.sta_device, 3, alpha=0.5,
                                            min_interval_ms=200, from_address=ap_mac)
            ns3_side.link_state(gw, scenario.sta_device, 4)
            gw.run(until=3.0, close=False)
            gw.client.ping(b"")  # every report before this was handled by the server
        rows = dump_reports(server.url)
    assert not sysv_leftovers(server.url), "a SysV queue was left behind"

    assert len(raw) > 100, "the trace source fired too rarely to test anything"
    assert raw_hook.samples == len(raw) and raw_hook.emitted == len(raw)
    got_raw = [(t, m["rssi_dbm"], m["snr_db"]) for t, p, m, n in rows if p == 2]
    assert got_raw == raw  # exact: float64 sim times and dBm survive msgpack
    assert {n for _, p, _, n in rows if p in (2, 3, 4)} == {int(scenario.sta.GetId())}
    assert all(0.0 < t < 3.0 for t, _, _ in raw)
    assert [t for t, _, _ in raw] == sorted(t for t, _, _ in raw)
    assert raw[0][1] - raw[-1][1] > 10.0, "RSSI should fall as the station walks away"
    links = [(t, m["link_up"]) for t, p, m, _ in rows if "link_up" in m]
    # the state at attach time (t=0), then the association's link change
    assert links[0][0] == 0.0 and any(up and 0.0 < t < 0.5 for t, up in links[1:]), links

    want = expected_filtered(raw, 0.5, 0.2)
    got = [(t, m["rssi_dbm"], m["snr_db"]) for t, p, m, n in rows if p == 3]
    assert filtered.emitted == len(want) == len(got)
    for (tg, ag, bg), (tw, aw, bw) in zip(got, want, strict=True):
        assert tg == tw and ag == pytest.approx(aw, abs=1e-9) and bg == pytest.approx(bw, abs=1e-9)


def test_periodic_sampling_and_example_b_loss_per_path(sim: Any, tmp_path: Path) -> None:
    import ns3_side
    from ns3_side.examples import two_paths_loss

    ns = sim
    schedule = {0.0: (0.0, 0.3), 1.0: (0.3, 0.0)}
    with Server(url_for("unix", tmp_path), tmp_path) as server:
        paths = two_paths_loss.build(ns, pps=400, duration=2.0)
        with ns3_side.SimClient(server.url) as gw:
            two_paths_loss.attach(gw, paths, schedule, period_ms=250)
            ticks: list[float] = []

            def sample(t: float) -> Report:
                ticks.append(t)
                return Report(t, 9, {"tick": len(ticks)})

            gw.every(100, sample)
            gw.run(until=2.01, close=False)
            gw.client.ping(b"")
        rows = dump_reports(server.url)

    assert [round(t, 9) for t in ticks] == [round(0.1 * i, 9) for i in range(1, 21)]
    assert [(round(t, 9), m["tick"]) for t, p, m, _ in rows if p == 9] == \
        [(round(0.1 * i, 9), i) for i in range(1, 21)]
    loss = {1: {}, 2: {}}
    for t, p, m, _ in rows:
        if "loss" in m:
            assert round(t / 0.25, 6).is_integer(), f"loss report off the 250 ms grid: {t}"
            loss[p][round(t, 3)] = m
    for path, (before, after) in ((1, (0.0, 0.3)), (2, (0.3, 0.0))):
        early = [m["loss"] for t, m in loss[path].items() if t <= 1.0]
        late = [m["loss"] for t, m in loss[path].items() if t >= 1.25]
        assert len(early) == 4 and len(late) == 4, loss[path]
        assert sum(early) / 4 == pytest.approx(before, abs=0.08), (path, early)
        assert sum(late) / 4 == pytest.approx(after, abs=0.08), (path, late)
    rtts = [m["rtt_ms"] for _, p, m, _ in rows if "rtt_ms" in m]
    cwnds = [m["cwnd_bytes"] for _, p, m, _ in rows if "cwnd_bytes" in m]
    assert rtts and cwnds
    assert min(rtts) >= 2 * paths.delays_ms[0]  # an RTT cannot beat the propagation delay
    drops = [m["queue_drops"] for _, p, m, _ in rows if p == 1 and "queue_drops" in m]
    assert drops and drops == sorted(drops) and drops[-1] > 0  # TCP overfills path 1's queue


# ---------------------------------------------------------------- lockstep


def test_lockstep_simulation_waits_for_each_reply(sim: Any, tmp_path: Path) -> None:
    import ns3_side

    delay = 0.05
    server = Server(url_for("tcp", tmp_path), tmp_path, env={"NS3_TEST_STEP_DELAY": str(delay)})
    with server, ns3_side.SimClient(server.url, lockstep=True, step_op="sim.step") as gw:
        results: list[tuple[float, dict[str, Any]]] = []
        gw.on(lambda r: results.append((gw.now(), r.value)), Result)
        gw.every(100, lambda t: Report(t, 1, {"n": gw.reports_sent + 1}))
        start = time.monotonic()
        gw.run(until=1.05)
        elapsed = time.monotonic() - start
    assert gw.steps == 10 and len(results) == 10
    for i, (now, value) in enumerate(results, start=1):
        # The server had handled report i (and only i) before it answered step i,
        # and the simulation was still at that report's sim time when the answer came.
        assert value["step"] == i and value["reports"] == i
        assert value["sim_time"] == pytest.approx(0.1 * i) and now == pytest.approx(0.1 * i)
    assert elapsed >= 10 * delay


@pytest.mark.parametrize("transport", ["tcp", "fifo", "sysv", "shm"])
def test_lockstep_dead_server_fails_the_simulation_clearly(sim: Any, tmp_path: Path,
                                                           transport: str) -> None:
    import ns3_side

    ns = sim
    server = Server(url_for(transport, tmp_path), tmp_path)
    try:
        gw = ns3_side.SimClient(server.url, lockstep=True, step_timeout=3.0)
        gw.every(100, lambda t: Report(t, 1, {"rssi_dbm": -50.0}))
        gw.schedule(0.45, lambda: (server.proc.kill(), server.proc.wait()))
        start = time.monotonic()
        with pytest.raises(ns3_side.LockstepError) as info:
            gw.run(until=5.0)
        elapsed = time.monotonic() - start
    finally:
        server.stop()
        if transport == "sysv":
            _remove_sysv_queue(server.url)
    assert elapsed < 3.0 + 2.0, f"took {elapsed:.1f} s to notice"
    assert "sim time 0.500000" in str(info.value) and server.url in str(info.value)
    assert ns.Simulator.Now().GetSeconds() == pytest.approx(0.5)
    assert gw.steps == 4
    assert not sysv_leftovers(server.url)


def test_lockstep_frozen_server_times_out(sim: Any, tmp_path: Path) -> None:
    import ns3_side

    with Server(url_for("unix", tmp_path), tmp_path) as server:
        gw = ns3_side.SimClient(server.url, lockstep=True, step_timeout=0.5)
        gw.every(100, lambda t: Report(t, 1, {"snr_db": 20.0}))
        gw.schedule(0.25, lambda: server.signal(signal.SIGSTOP))
        with pytest.raises(ns3_side.LockstepError, match=r"did not answer within 0.5 s at "
                                                         r"sim time 0.300000"):
            gw.run(until=5.0)


def _remove_sysv_queue(url: str) -> None:
    import sysv_ipc

    key = int(re.match(r"sysv://(0x[0-9a-f]+)", url).group(1), 16)  # type: ignore[union-attr]
    with contextlib.suppress(sysv_ipc.ExistentialError):
        sysv_ipc.MessageQueue(key).remove()


# ---------------------------------------------------------------- back into the simulation


@pytest.mark.parametrize("transport", ["fifo", "shm"])  # shm: the receiver spins beside the sim
def test_events_reach_the_simulation_thread_in_real_time(sim: Any, tmp_path: Path,
                                                         transport: str) -> None:
    import ns3_side

    ns = sim
    ns.GlobalValue.Bind("SimulatorImplementationType",
                        ns.StringValue("ns3::RealtimeSimulatorImpl"))
    seen: list[tuple[str, float, int]] = []
    server = Server(url_for(transport, tmp_path), tmp_path)
    with server, ns3_side.SimClient(server.url) as gw:
        def on_event(event: Event) -> None:
            seen.append((event.kind, gw.now(), threading.get_ident()))
            ns.Simulator.Stop(ns.Seconds(0.1))  # act on the simulation

        gw.on(on_event, Event)
        gw.on(lambda r: seen.append(("result", gw.now(), threading.get_ident())), Result)
        gw.schedule(0.2, lambda: gw.command("events.push", kind="SUB_ESTABLISHED",
                                            attrs={"token": 7}))
        gw.every(50, lambda t: None)  # keep the real-time simulation busy
        start = time.monotonic()
        gw.run(until=3.0)
        elapsed = time.monotonic() - start
    assert [kind for kind, _, _ in seen] == ["result", "SUB_ESTABLISHED"]
    assert {ident for _, _, ident in seen} == {threading.get_ident()}
    event_time = seen[1][1]
    assert 0.2 <= event_time < 0.5
    assert ns.Simulator.Now().GetSeconds() == pytest.approx(event_time + 0.1, abs=0.06)
    assert elapsed < 1.5  # the handler's Stop ended the 3 s run early


# ---------------------------------------------------------------- legacy sspi


def test_legacy_sspi_fifo_gets_snr_and_backup_records(sim: Any, tmp_path: Path) -> None:
    """An mptcpd-style reader on a plain FIFO sees WIFI_SNR and BACKUP_FLAG_ON records."""
    from ns3_side.examples import wifi_rssi

    fifo = tmp_path / "mptcp-ns3-fifo"
    os.mkfifo(fifo, 0o600)
    # The reader is open before the simulation starts, as mptcpd's is; the few
    # records fit in the pipe, so it is read after the simulation.
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        gw = wifi_rssi.run(f"fifo://{fifo}?framing=fixed:8&codec=sspi", duration=5.0,
                           start_m=10.0, speed=15.0, alpha=0.3, min_interval_ms=200,
                           backup_below=-80.0)
        data = os.read(rfd, 1 << 16)
    finally:
        os.close(rfd)
    assert len(data) % 8 == 0
    records = [RECORD.unpack_from(data, i) for i in range(0, len(data), 8)]
    snrs = [v for k, v in records if k == SspiType.WIFI_SNR]
    assert len(snrs) == gw.reports_sent
    assert len(snrs) >= 10 and snrs[0] - snrs[-1] >= 10
    assert (SspiType.BACKUP_FLAG_ON, 2) in records
    assert gw.reports_unsendable >= 1  # link_up has no sspi record
    first_backup = records.index((SspiType.BACKUP_FLAG_ON, 2))
    assert all(k == SspiType.WIFI_SNR for k, _ in records[:first_backup])


# ---------------------------------------------------------------- errors


def test_no_server_is_a_clear_connect_error(ns: Any, tmp_path: Path) -> None:
    import ns3_side

    start = time.monotonic()
    with pytest.raises(ConnectError, match="no ipcgw server answering at fifo://"):
        ns3_side.SimClient(f"fifo://{tmp_path}/nobody", timeout=1.0)
    with pytest.raises(ConnectError, match="python -m ipcgw serve"):
        ns3_side.SimClient("tcp://127.0.0.1:1", timeout=1.0)
    assert time.monotonic() - start < 3.0


def test_callback_error_stops_the_simulation_and_says_bye(sim: Any, tmp_path: Path) -> None:
    import ns3_side

    ns = sim
    with Server(url_for("tcp", tmp_path), tmp_path) as server:
        gw = ns3_side.SimClient(server.url)

        def sample(t: float) -> Report:
            if t > 0.25:
                raise ValueError("sensor broke")
            return Report(t, 1, {"rssi_dbm": -60.0})

        gw.every(100, sample)
        with pytest.raises(ns3_side.SimulationAborted, match="ValueError: sensor broke") as info:
            gw.run(until=5.0)
        assert isinstance(info.value.__cause__, ValueError)
        assert ns.Simulator.Now().GetSeconds() == pytest.approx(0.3)
        assert gw.reports_sent == 2
        deadline = time.monotonic() + 5
        while "said bye" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "said bye" in server.log()


# ---------------------------------------------------------------- example (a) end to end


@pytest.mark.netns
def test_example_a_rssi_policy_flips_wlan_endpoint_in_server_namespace(
        sim: Any, tmp_path: Path) -> None:
    """Station walks away; RssiPolicy in the server namespace sets endpoint 2 backup
    right after the report that takes its filtered RSSI below -80 dBm (lockstep: each
    report is handled before the simulation moves on, so the check is exact)."""
    from conftest import require_netns, unique

    require_netns()
    import ns3_side
    from ipcgw.mptcp.pm import PathManager
    from ipcgw.mptcp.policy import RssiPolicy
    from ipcgw.testbed import Testbed
    from ns3_side.examples import wifi_rssi

    ns = sim
    tb = Testbed(prefix=unique("ipn3"), client_endpoints=[])
    server: Server | None = None
    try:
        tb.up()
        with PathManager(tb.server) as pm:
            pm.add_endpoint(tb.server_addr(1), id=1, flags="signal")  # LTE
            pm.add_endpoint(tb.server_addr(2), id=2, flags="signal")  # WLAN
            server = Server(url_for("fifo", tmp_path), tmp_path, handler="mptcp",
                            extra=["--policy", "ipcgw.mptcp.policy:RssiPolicy"],
                            netns=tb.server)
            scenario = wifi_rssi.build(ns, start_m=20.0, speed=15.0, duration=4.0)
            observed: list[tuple[float, float, bool]] = []
            with ns3_side.SimClient(server.url, name="example-a", lockstep=True) as gw:
                hook = wifi_rssi.attach(gw, scenario, alpha=0.3, min_interval_ms=100)

                @gw.after_emit
                def look(report: Report) -> None:  # the server has handled the report
                    if "rssi_dbm" in report.metrics:
                        observed.append((report.sim_time, report.metrics["rssi_dbm"],
                                         "backup" in pm.endpoint(2)["flag_names"]))

                gw.run(until=4.0)
            shown = subprocess.run(["ip", "-n", tb.server, "mptcp", "endpoint", "show"],
                                   capture_output=True, text=True, check=True).stdout
    finally:
        if server is not None:
            server.stop()
        tb.down()

    assert hook.emitted == len(observed) >= 20
    policy = RssiPolicy()  # the server's policy, replayed on what it was sent
    expected = []
    for _, rssi, _ in observed:
        policy.filtered = rssi if policy.filtered is None else (
            policy.alpha * policy.filtered + (1 - policy.alpha) * rssi)
        expected.append(policy.filtered < policy.threshold_dbm)
    assert [backup for _, _, backup in observed] == expected
    assert not expected[0] and expected[-1], "the run must cross -80 dBm"
    line = {ln.split()[2]: ln for ln in shown.splitlines() if " id " in f" {ln} "}
    assert "backup" in line["2"] and "backup" not in line["1"], shown


# ---------------------------------------------------------------- lifecycle, async failures


def test_plain_ns3_run_and_destroy_disconnect_cleanly(sim: Any, tmp_path: Path) -> None:
    """A script that never calls gw.run/close: Simulator::Destroy says Bye for it."""
    import ns3_side

    ns = sim
    with Server(url_for("unix", tmp_path), tmp_path) as server:
        gw = ns3_side.SimClient(server.url)
        gw.every(100, lambda t: Report(t, 1, {"loss": 0.0}))
        ns.Simulator.Stop(ns.Seconds(1.0))
        ns.Simulator.Run()
        assert gw.reports_sent == 9 and not gw._closed
        ns.Simulator.Destroy()
        assert gw._closed
        deadline = time.monotonic() + 5
        while "said bye" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "said bye" in server.log()


@pytest.mark.parametrize("transport", ["tcp", "fifo", "shm"])
def test_async_dead_server_stops_the_simulation(sim: Any, tmp_path: Path,
                                                transport: str) -> None:
    import ns3_side

    ns = sim
    ns.GlobalValue.Bind("SimulatorImplementationType",
                        ns.StringValue("ns3::RealtimeSimulatorImpl"))
    with Server(url_for(transport, tmp_path), tmp_path) as server:
        gw = ns3_side.SimClient(server.url)
        gw.every(50, lambda t: Report(t, 1, {"rssi_dbm": -70.0}))
        gw.schedule(0.2, lambda: server.proc.kill())
        start = time.monotonic()
        with pytest.raises(ns3_side.SimulationAborted, match="lost the server at"):
            gw.run(until=5.0)
    assert time.monotonic() - start < 1.5
    assert 0.2 <= ns.Simulator.Now().GetSeconds() < 1.0


def test_bench_smoke(ns: Any) -> None:
    """The benchmark of the report path runs (numbers are in ns3_side/README.md)."""
    import tempfile

    from ns3_side import clientbench

    with tempfile.TemporaryDirectory() as tmp:
        result = clientbench.measure("unix", 2000, tmp)
    assert result["report_us"] > 0 and result["reports_per_s"] > 1000


def test_lockstep_needs_nothing_of_the_handler(sim: Any, tmp_path: Path) -> None:
    """The lockstep barrier is the session's Ping, not the handler's: one that
    knows only Reports still paces the simulation."""
    import ns3_side

    with Server(url_for("unix", tmp_path), tmp_path, handler="ns3_helpers:ForgetfulHandler") as server:
        gw = ns3_side.SimClient(server.url, lockstep=True, step_timeout=3.0)
        gw.every(100, lambda t: Report(t, 1, {"rssi_dbm": -60.0}))
        gw.run(until=1.05)
        assert gw.steps == 10
        gw.close()


def test_client_time_constant_filter_does_not_depend_on_traffic(sim: Any, tmp_path: Path) -> None:
    """The station hears ~10 beacons/s idle and ~1000 frames/s loaded. At t = 1 s it jumps
    from 10 m to 40 m (~18 dB weaker): 300 ms later ``tau_ms=300`` has closed 1 - 1/e of
    the step in both runs, while ``alpha=0.3`` per frame lags idle and is raw loaded."""
    import ns3_side
    from ns3_side.examples import wifi_rssi

    ns = sim

    def step_fraction(rows: list[list[Any]], path: int, before: float, after: float) -> float:
        at = [m["rssi_dbm"] for t, p, m, _ in rows if p == path and t <= 1.3]
        return float((at[-1] - after) / (before - after))

    got: dict[float, tuple[float, float]] = {}
    for pps in (0.0, 1000.0):
        with Server(url_for("unix", tmp_path), tmp_path) as server:
            scenario = wifi_rssi.build(ns, start_m=10.0, speed=0.0, traffic_pps=pps,
                                       duration=2.0)
            ap_mac = scenario.ap_device.GetAddress()
            with ns3_side.SimClient(server.url, name=f"tau-{pps:g}") as gw:
                raw: list[tuple[float, float]] = []
                truth = gw.own(gw.cpp.WifiSignal())
                truth.FilterFrom(ap_mac)
                truth.fn = lambda t, a, b, raw=raw: raw.append((t, a))
                assert truth.Attach(scenario.sta_device.GetPhy())
                ns3_side.wifi_signal(gw, scenario.sta_device, 2, tau_ms=300, from_address=ap_mac)
                ns3_side.wifi_signal(gw, scenario.sta_device, 3, alpha=0.3, from_address=ap_mac)
                mob = scenario.sta_mobility
                gw.schedule(1.0, lambda mob=mob: mob.SetPosition(ns.Vector(40, 0, 0)))
                gw.run(until=2.0, close=False)
                gw.client.ping(b"")
            rows = dump_reports(server.url)
        ns.Simulator.Destroy()  # the next run starts at sim time 0 again
        before = [a for t, a in raw if t < 1.0][-1]
        after = [a for t, a in raw if t > 1.0][-1]
        assert before - after > 15, (before, after)
        frames_per_s = sum(1 for t, _ in raw if 1.0 < t <= 2.0)
        assert (frames_per_s < 20) if pps == 0 else (frames_per_s > 500), frames_per_s
        got[pps] = (step_fraction(rows, 2, before, after), step_fraction(rows, 3, before, after))
    tau_idle, alpha_idle = got[0.0]
    tau_loaded, alpha_loaded = got[1000.0]
    e = 1 / 2.718281828459045
    # idle, beacons are 102.4 ms apart: the filter's clock starts at the last beacon before
    # the jump and stops at the last one before 1.3 s, each up to 0.1 s early (e^±0.1/0.3)
    assert tau_loaded == pytest.approx(e, abs=0.02) and e * 0.7 < tau_idle < e * 1.45
    assert alpha_loaded < 1e-6 < 0.1 < alpha_idle  # per-frame weights: the traffic decides


def test_lte_ue_reports_rsrp_and_sinr_like_wifi_rssi(sim: Any, tmp_path: Path) -> None:
    """A UE walking away from its eNB (LENA, no EPC needed for the PHY): ``lte_signal``
    reports its serving cell's RSRP and SINR, rate-limited, and RSRP falls as it goes
    (Friis, LteHelper's default: 6 dB per doubling of the distance)."""
    import ns3_side

    ns = sim
    ns.Config.SetDefault("ns3::LteUePhy::RsrpSinrSamplePeriod", ns.UintegerValue(10))
    lte = ns.CreateObject[ns.LteHelper]()
    enb_nodes, ue_nodes = ns.NodeContainer(), ns.NodeContainer()
    enb_nodes.Create(1)
    ue_nodes.Create(1)
    mobility = ns.MobilityHelper()
    mobility.SetMobilityModel("ns3::ConstantPositionMobilityModel")
    mobility.Install(enb_nodes)
    mobility.SetMobilityModel("ns3::ConstantVelocityMobilityModel")
    mobility.Install(ue_nodes)
    ue_mob = ue_nodes.Get(0).GetObject[ns.ConstantVelocityMobilityModel]()
    ue_mob.SetPosition(ns.Vector(100, 0, 0))
    ue_mob.SetVelocity(ns.Vector(100, 0, 0))  # 100 m -> 200 m in the second
    enb_devs = lte.InstallEnbDevice(enb_nodes)
    ue_devs = lte.InstallUeDevice(ue_nodes)
    lte.Attach(ue_devs, enb_devs.Get(0))
    with Server(url_for("unix", tmp_path), tmp_path) as server:
        with ns3_side.SimClient(server.url, name="test-lte") as gw:
            hook = ns3_side.lte_signal(gw, ue_devs.Get(0), 5, min_interval_ms=50)
            with pytest.raises(TypeError, match="expected an LteUeNetDevice"):
                ns3_side.lte_signal(gw, enb_devs.Get(0), 5)
            gw.run(until=1.0, close=False)
            gw.client.ping(b"")
        rows = [(t, m) for t, p, m, _ in dump_reports(server.url) if p == 5]
    assert hook.samples > len(rows) >= 15, (hook.samples, len(rows))
    times = [t for t, _ in rows]
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(times))
    first = statistics.mean(m["rsrp_dbm"] for t, m in rows if t < 0.3)
    last = statistics.mean(m["rsrp_dbm"] for t, m in rows if t > 0.7)
    assert -140 < last < first < -30, (first, last)
    assert first - last == pytest.approx(20 * math.log10(190 / 120), abs=1.5)
    assert all(m["sinr_db"] > 0 for _, m in rows), rows[:3]
