"""Issue #20: the handover's reaction chain, timed step by step on CLOCK_MONOTONIC.

A veth testbed (scenario 1: the client's subflow endpoint 2 is path 2) where
every instant is known: an RSSI ramp of -10 dB/s crosses -80 dBm exactly 1 s
after t0, reports go out every 100 ms stamped ``host_mono`` through a real
unix-socket gateway to RssiPolicy (alpha 0.5), an MPTCP bulk transfer uses
both paths. Each figure of :func:`ns3_side.lab.chain.reaction_chain` must equal
what the arithmetic says, within the scheduling jitter of this shared VM.
"""

from __future__ import annotations

import os
import time

import pytest
from conftest import require_netns

from ns3_side.lab.chain import reaction_chain

THRESHOLD = -80.0
PERIOD = 0.1
ALPHA = 0.5


def ramp(t: float) -> float:
    return -70.0 - 10.0 * t  # crosses -80 dBm at t = 1.0 s


def test_chain_of_a_made_up_handover() -> None:
    """Pure arithmetic: every step, and a step that did not happen stays None."""
    rows = [(10.0 + 0.1 * i, {1: 1000 * i, 2: 1000 * i if i < 25 else 25_000}) for i in range(40)]
    c = reaction_chain(THRESHOLD, crossing_mono=11.0, reports=[(11.05, -79.0), (11.15, -81.0)],
                       decision={"decided_mono": 11.6, "acked_mono": 11.601}, rows=rows)
    assert c["model_crossing_to_first_report_below_ms"] == pytest.approx(150)
    assert c["first_report_below_to_decision_ms"] == pytest.approx(450)
    assert c["decision_to_kernel_ack_ms"] == pytest.approx(1)
    assert c["wlan_below_10pct_mono"] == pytest.approx(12.6)  # first interval without WLAN bytes
    assert c["other_path_up_mono"] is None  # path 1 never carried more than before
    none = reaction_chain(THRESHOLD, crossing_mono=None, reports=[], decision=None)
    assert all(v is None for k, v in none.items() if k != "threshold_dbm")


@pytest.mark.netns
def test_reaction_chain_on_veth_matches_the_known_instants() -> None:
    require_netns()
    from ipcgw_bench.experiments.control import PolicyServer

    from ipcgw.client import connect
    from ipcgw.messages import Report
    from ipcgw.mptcp.policy import RssiPolicy
    from ipcgw.testbed import PathSpec, Testbed
    from ns3_side.lab.traffic import Bulk, PathSampler

    prefix = f"ipch{os.getpid() % 10000}"
    tb = Testbed.scenario(1, prefix=prefix, paths=[PathSpec(rate_mbit=20), PathSpec(rate_mbit=20)])
    gw = bulk = sampler = None
    try:
        tb.up()
        gw = PolicyServer(f"ipcgw.mptcp.policy:RssiPolicy?alpha={ALPHA}", {}, "unix", tb.client)
        url = gw.start()
        sampler = PathSampler(tb.client, {tb.client_addr(1): 1, tb.client_addr(2): 2},
                              interval=0.05).start()
        bulk = Bulk(tb.client, tb.server, tb.server_addr(1))
        deadline = time.monotonic() + 10
        while not (sampler.rows and sampler.rows[-1]["bytes"].get(2)):
            assert time.monotonic() < deadline, "no subflow on path 2"
            time.sleep(0.05)
        time.sleep(0.5)
        sent: list[tuple[float, float]] = []
        with connect(url, timeout=10, name="chain-test") as client:
            t0 = time.monotonic() + 0.2
            for k in range(26):
                time.sleep(max(0.0, t0 + k * PERIOD - time.monotonic()))
                now = time.monotonic()
                client.send(Report(k * PERIOD, 2, {"rssi_dbm": ramp(k * PERIOD), "host_mono": now}))
                sent.append((now, ramp(k * PERIOD)))
            client.ping(b"", 5)
        time.sleep(2.0)  # the transfer moves
        inner = gw.probe.inner
        assert isinstance(inner, RssiPolicy)
        first = next(d for d in inner.decisions if d["backup"] is True)
        rows = [(sampler.t0 + r["t"], r["bytes"]) for r in list(sampler.rows)]
        chain = reaction_chain(THRESHOLD, crossing_mono=t0 + 1.0, reports=sent, decision=first,
                               rows=rows)
    finally:
        for step in (bulk.stop if bulk else None, sampler.stop if sampler else None,
                     gw.stop if gw else None, tb.down):
            if step is not None:
                step()
    assert not Testbed(prefix=prefix).exists()
    # the arithmetic: first report below -80 is k = 11 (-81 dBm); the policy's
    # alpha-0.5 filter crosses at the k below
    f, k_dec = None, None
    for k in range(26):
        v = ramp(k * PERIOD)
        f = v if f is None else 0.5 * f + 0.5 * v
        if f < THRESHOLD:
            k_dec = k
            break
    assert k_dec is not None
    jitter = 40.0  # ms: sleeps on a shared 2-vCPU VM
    assert chain["model_crossing_to_first_report_below_ms"] == pytest.approx(100, abs=jitter)
    assert chain["first_report_below_to_decision_ms"] == pytest.approx((k_dec - 11) * 100,
                                                                       abs=jitter)
    assert first["report_sim"] == pytest.approx(k_dec * PERIOD)
    assert first["decided_mono"] - first["report_mono"] < jitter / 1000  # IPC + policy
    assert 0 <= chain["decision_to_kernel_ack_ms"] < 50
    assert chain["kernel_ack_to_wlan_below_10pct_ms"] is not None, chain
    assert 0 < chain["kernel_ack_to_wlan_below_10pct_ms"] < 3000, chain
    for a, b in (("model_crossing", "first_report_below"), ("first_report_below", "decision"),
                 ("decision", "kernel_ack"), ("kernel_ack", "wlan_below_10pct")):
        assert chain[f"{a}_mono"] <= chain[f"{b}_mono"], (a, b, chain)


@pytest.mark.ns3
@pytest.mark.slow
def test_deaf_station_makes_the_policy_act_on_link_loss(tmp_path: object) -> None:
    """ns-3's default preamble detection (deaf below about -82 dBm) and 20 m/s: the
    link drops before the policy's filter reaches -80 dBm. The old policy ignored
    ``link_up`` and never moved the traffic; now the link-down report does."""
    require_netns()
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("ns") is None:
        pytest.skip("ns3 wheel not installed")
    from ns3_side.lab.handover import HandoverConfig, run

    prefix = f"ipdf{os.getpid() % 10000}"
    cfg = HandoverConfig(transport="unix", duration=6.0, start_m=30.0, speed_mps=20.0,
                         detect_dbm=None, prefix=prefix)
    result = run(cfg, Path(str(tmp_path)) / "out", echo=None)
    chain = result.summary["chain"]
    assert chain["decision_why"] == "link down", chain
    assert chain["link_down_s"] is not None and chain["kernel_ack_s"] >= chain["link_down_s"]
    assert result.summary["endpoint_backup_s"] is not None, result.summary
    from ipcgw.testbed import Testbed

    assert not Testbed(prefix=prefix).exists()
