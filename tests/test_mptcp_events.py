"""The seed's two subflow scenarios on the real kernel, seen through the handler's
event stream (the Events a subscribed client receives) on both sides."""

from __future__ import annotations

from collections.abc import Callable

from netns_helpers import FakeSession, exchange, mptcp_pair, testbeds, wait_until

from ipcgw.messages import Command, Event
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.testbed import Testbed

__all__ = ["testbeds"]  # the fixture, imported to be found


def subscribed(netns: str) -> tuple[MptcpHandler, FakeSession]:
    handler = MptcpHandler(netns=netns)
    session = FakeSession()
    result = handler.on_message(session, Command(1, "subscribe", {"events": True}))
    assert result is not None and result.ok
    return handler, session


def kinds(session: FakeSession, token: int) -> list[str]:
    return [m.kind for m in session.posted if isinstance(m, Event)
            and m.attrs.get("token") == token]


def first(session: FakeSession, kind: str) -> Event:
    return session.wait_posted(lambda m: isinstance(m, Event) and m.kind == kind)  # type: ignore[return-value]


def test_scenario1_client_subflow_endpoint(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds(scenario=1)
    client, cs = subscribed(tb.client)
    server, ss = subscribed(tb.server)
    try:
        with mptcp_pair(tb, port=5201) as (cli, conn):
            exchange(cli, conn)
            c_created = first(cs, "CREATED")
            s_created = first(ss, "CREATED")
            c_sub = first(cs, "SUB_ESTABLISHED")
            s_sub = first(ss, "SUB_ESTABLISHED")
            first(cs, "ESTABLISHED")
            first(ss, "ESTABLISHED")
        first(cs, "CLOSED")
        first(ss, "CLOSED")
        ct, st = c_created.attrs["token"], s_created.attrs["token"]
        assert ct != st
        wait_until(lambda: "CLOSED" in kinds(cs, ct) and "CLOSED" in kinds(ss, st))
        # the seed's table, per side, in order
        expected = ["CREATED", "ESTABLISHED", "SUB_ESTABLISHED", "CLOSED"]
        assert [k for k in kinds(cs, ct) if k in expected] == expected
        assert sorted(k for k in kinds(ss, st) if k in expected) == sorted(expected)
        assert kinds(ss, st)[0] == "CREATED" and kinds(ss, st)[-1] == "CLOSED"
        # addresses: the initial subflow on path 1, the join from the client's endpoint
        a = c_created.attrs
        assert (a["saddr"], a["daddr"], a["dport"]) == ("10.0.1.1", "10.0.1.2", 5201)
        b = s_created.attrs
        assert (b["saddr"], b["daddr"], b["sport"], b["server_side"]) == (
            "10.0.1.2", "10.0.1.1", 5201, 1)
        assert b["dport"] == a["sport"]
        assert c_sub.attrs["token"] == ct and s_sub.attrs["token"] == st
        assert (c_sub.attrs["saddr"], c_sub.attrs["daddr"], c_sub.attrs["loc_id"]) == (
            "10.0.2.1", "10.0.1.2", 2)
        assert (s_sub.attrs["saddr"], s_sub.attrs["daddr"], s_sub.attrs["rem_id"]) == (
            "10.0.1.2", "10.0.2.1", 2)
        assert s_sub.attrs["dport"] == c_sub.attrs["sport"]
    finally:
        client.close()
        server.close()


def test_scenario2_server_signal_endpoint(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds(scenario=2)
    client, cs = subscribed(tb.client)
    server, ss = subscribed(tb.server)
    try:
        with mptcp_pair(tb, port=5202) as (cli, conn):
            exchange(cli, conn)
            announced = first(cs, "ANNOUNCED")
            sub = cs.wait_posted(lambda m: isinstance(m, Event) and m.kind == "SUB_ESTABLISHED"
                                 and m.attrs.get("daddr") == "10.0.2.2")
            s_sub = first(ss, "SUB_ESTABLISHED")
        token = announced.attrs["token"]
        assert announced.attrs["daddr"] == "10.0.2.2" and announced.attrs["rem_id"] == 2
        assert sub.attrs["token"] == token and sub.attrs["rem_id"] == 2
        assert sub.attrs["saddr"] == "10.0.2.1" and sub.attrs["dport"] == 5202
        order = kinds(cs, token)
        assert order.index("ANNOUNCED") < order.index("SUB_ESTABLISHED")
        assert (s_sub.attrs["saddr"], s_sub.attrs["loc_id"]) == ("10.0.2.2", 2)
    finally:
        client.close()
        server.close()


def test_unsubscribed_sessions_get_nothing(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds(scenario=1)
    handler, subscribed_session = subscribed(tb.client)
    quiet = FakeSession(2)
    handler.on_connect(quiet)
    try:
        with mptcp_pair(tb, port=5203) as (cli, conn):
            exchange(cli, conn)
            first(subscribed_session, "SUB_ESTABLISHED")
        assert quiet.posted == []
        handler.on_disconnect(subscribed_session)
        n = len(subscribed_session.posted)
        with mptcp_pair(tb, port=5204) as (cli, conn):
            exchange(cli, conn)
        assert len(subscribed_session.posted) == n
    finally:
        handler.close()
