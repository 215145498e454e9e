"""Stats during a real transfer: path 1 rate-limited and clean, path 2 rate-limited and
lossy (scenario 1, so the join runs over path 2)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from netns_helpers import FakeSession, exchange, mptcp_pair, pump, require_nft, testbeds

from ipcgw.messages import Command, Stats
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.testbed import PathSpec, Testbed

__all__ = ["testbeds"]

RATE_MBIT = 10
RATE_BYTES = RATE_MBIT * 1_000_000 / 8


def test_stats_stream_during_lossy_transfer(testbeds: Callable[..., Testbed]) -> None:
    require_nft()
    # a deep queue and a small send buffer: the clean path is rate-limited but never drops
    tb = testbeds(scenario=1, paths=[
        PathSpec(rate_mbit=RATE_MBIT, queue_bytes=2_000_000),
        PathSpec(rate_mbit=RATE_MBIT, loss_pct=2.0, queue_bytes=2_000_000),
    ])
    handler = MptcpHandler(netns=tb.client)
    session = FakeSession()
    try:
        with mptcp_pair(tb, port=5401, sndbuf=128 * 1024) as (cli, conn):
            exchange(cli, conn)
            r = handler.on_message(session, Command(1, "subscribe",
                                                    {"events": False, "stats_interval": 0.25}))
            assert r is not None and r.ok and r.value["stats_interval"] == 0.25
            with pump(cli, conn):
                session.wait_posted(lambda m: isinstance(m, Stats) and len(m.subflows) >= 2
                                    and all(s["bytes_acked"] > 2_000_000 for s in m.subflows),
                                    timeout=30)
            stats = [m for m in session.posted if isinstance(m, Stats)]
    finally:
        handler.close()

    last = stats[-1]
    (conn_stats,) = [c for c in last.connections if c["saddr"] == "10.0.1.1"]
    token = conn_stats["token"]
    by_path = {s["saddr"]: s for s in last.subflows}
    assert set(by_path) == {"10.0.1.1", "10.0.2.1"}
    assert all(s["token"] == token for s in last.subflows)  # tied to their connection
    clean, lossy = by_path["10.0.1.1"], by_path["10.0.2.1"]
    assert lossy["loc_id"] == 2 and clean["loc_id"] == 0

    # bytes grow from one Stats to the next
    acked = [sum(s["bytes_acked"] for s in m.subflows if s.get("token") == token)
             for m in stats if m.subflows]
    assert acked == sorted(acked) and acked[-1] > acked[0]
    assert conn_stats["bytes_sent"] > 4_000_000

    # retransmissions on the lossy path only
    assert lossy["total_retrans"] > 0 and lossy["bytes_retrans"] > 0
    assert clean["total_retrans"] == 0 and clean["bytes_retrans"] == 0

    # delivery rate near the configured rate (bytes/s): the median of the later
    # samples (the first ones include tbf's initial burst)
    for saddr in ("10.0.1.1", "10.0.2.1"):
        rates = [s["delivery_rate"] for m in stats for s in m.subflows if s["saddr"] == saddr]
        typical = statistics.median(rates[len(rates) // 2:])
        assert 0.4 * RATE_BYTES < typical < 1.2 * RATE_BYTES, (saddr, rates)
    for key in ("rtt", "rttvar", "min_rtt", "rcv_rtt", "bytes_sent", "bytes_received", "lost",
                "cwnd"):
        assert key in clean
    assert clean["rtt"] > 0 and clean["cwnd"] > 0
