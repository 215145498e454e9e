"""Userspace path manager driven through the handler's Commands, on the real kernel.

Both namespaces run ``path_manager=userspace``; each side has a handler (its
event listener also satisfies the kernel's "someone listens" rule).
"""

from __future__ import annotations

from collections.abc import Callable

from netns_helpers import Side, exchange, mptcp_pair, testbeds

from ipcgw.testbed import Testbed

__all__ = ["testbeds"]


def test_userspace_pm_full_cycle(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds(client_pm="userspace", server_pm="userspace")
    client, server = Side(tb.client), Side(tb.server)
    port = 5301
    try:
        with mptcp_pair(tb, port=port) as (cli, conn):
            exchange(cli, conn)
            ct = client.event("ESTABLISHED").attrs["token"]
            st = server.event("ESTABLISHED").attrs["token"]

            # ANNOUNCE on the server -> the client sees ANNOUNCED
            r = server.cmd("pm.announce", token=st, addr="10.0.2.2", id=5)
            assert r.ok, r.error
            ann = client.event("ANNOUNCED", token=ct)
            assert (ann.attrs["daddr"], ann.attrs["rem_id"]) == ("10.0.2.2", 5)

            # SUBFLOW_CREATE on the client -> SUB_ESTABLISHED on both sides
            r = client.cmd("pm.subflow_create", token=ct, local_addr="10.0.2.1", local_id=6,
                           remote_addr="10.0.2.2", remote_port=port)
            assert r.ok, r.error
            sub = client.event("SUB_ESTABLISHED", token=ct, saddr="10.0.2.1")
            assert (sub.attrs["daddr"], sub.attrs["dport"], sub.attrs["loc_id"]) == (
                "10.0.2.2", port, 6)
            server.event("SUB_ESTABLISHED", token=st, daddr="10.0.2.1")
            sport = sub.attrs["sport"]
            four = {"local_addr": "10.0.2.1", "local_port": sport,
                    "remote_addr": "10.0.2.2", "remote_port": port}

            # SET_FLAGS backup -> SUB_PRIORITY, raised on the peer only
            r = client.cmd("pm.set_flags", token=ct, backup=True, **four)
            assert r.ok, r.error
            prio = server.event("SUB_PRIORITY", token=st)
            assert prio.attrs["backup"] == 1 and prio.attrs["daddr"] == "10.0.2.1"
            assert client.count("SUB_PRIORITY") == 0

            # invalid token / id / subflow: the kernel's words, nothing changes
            r = client.cmd("pm.set_flags", token=ct ^ 1, backup=False, **four)
            assert not r.ok and r.error == "invalid token"
            r = server.cmd("pm.remove", token=st ^ 1, id=5)
            assert not r.ok and r.error == "invalid token"
            r = server.cmd("pm.remove", token=st, id=99)
            assert not r.ok and "99" in r.error and "not found" in r.error
            r = client.cmd("pm.subflow_destroy", token=ct, **{**four, "local_port": 1})
            assert not r.ok and r.error == "subflow not found"
            r = client.cmd("pm.announce", token=ct, addr="10.0.9.9", id=0)
            assert not r.ok
            assert client.count("SUB_CLOSED") == 0 and client.count("REMOVED") == 0
            stats = client.cmd("stats.get").value
            assert len([s for s in stats["subflows"] if s.get("token") == ct]) == 2
            exchange(cli, conn)  # the connection still works

            # SUBFLOW_DESTROY -> SUB_CLOSED
            r = client.cmd("pm.subflow_destroy", token=ct, **four)
            assert r.ok, r.error
            closed = client.event("SUB_CLOSED", token=ct)
            assert (closed.attrs["saddr"], closed.attrs["sport"]) == ("10.0.2.1", sport)

            # REMOVE on the server -> the peer sees REMOVED
            r = server.cmd("pm.remove", token=st, id=5)
            assert r.ok, r.error
            removed = client.event("REMOVED", token=ct)
            assert removed.attrs["rem_id"] == 5
            exchange(cli, conn)
    finally:
        client.handler.close()
        server.handler.close()


def test_userspace_commands_refused_by_kernel_pm(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds()  # both kernel PM
    client = Side(tb.client)
    try:
        with mptcp_pair(tb, port=5302) as (cli, conn):
            exchange(cli, conn)
            ct = client.event("ESTABLISHED").attrs["token"]
            r = client.cmd("pm.announce", token=ct, addr="10.0.2.1", id=5)
            assert not r.ok and r.error  # e.g. "userspace PM not selected"
            print("kernel PM refuses ANNOUNCE with:", r.error)
    finally:
        client.handler.close()
