"""End to end: ``python -m ipcgw serve --handler mptcp`` inside the testbed's
namespaces, clients in this (root) namespace over fifo, sysv and unix, the real
kernel behind. Also the legacy path: a C program writing sspi records to the
FIFO, and RssiPolicy fed by msgpack Reports."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import ServerProcess, fresh_url
from netns_helpers import exchange, mptcp_pair, testbeds, wait_until

from ipcgw.client import Client, connect
from ipcgw.errors import IpcgwError
from ipcgw.messages import Event, Report
from ipcgw.mptcp.pm import PathManager
from ipcgw.testbed import Testbed

__all__ = ["testbeds"]

SSPI_SEQUENCE_WRITER = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

struct sspi { int32_t type; int32_t value; };

/* writer PATH TYPE VALUE [TYPE VALUE ...] */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY);
    if (fd < 0) return 2;
    for (int i = 2; i + 1 < argc; i += 2) {
        struct sspi rec = { atoi(argv[i]), atoi(argv[i + 1]) };
        if (write(fd, &rec, sizeof rec) != sizeof rec) return 3;
    }
    close(fd);
    return 0;
}
"""


class EventStream:
    """Events a gateway client received, searchable while more arrive."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[Event] = []

    def wait(self, kind: str, timeout: float = 10.0, **attrs: Any) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.kind == kind and all(ev.attrs.get(k) == v for k, v in attrs.items()):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                got = [(e.kind, e.attrs) for e in self.events]
                raise AssertionError(f"no {kind} {attrs} within {timeout} s; got {got}")
            msg = self.client.recv(timeout=left)
            if isinstance(msg, Event):
                self.events.append(msg)

    def kinds(self, token: int) -> list[str]:
        return [e.kind for e in self.events if e.attrs.get("token") == token]


def gateway(tb_ns: str, transport: str, tmp: Path, *extra: str) -> ServerProcess:
    return ServerProcess([fresh_url(transport, tmp)], tmp, netns=tb_ns,
                         extra=["--handler", "mptcp", *extra])


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    made: list[ServerProcess] = []
    try:
        yield made
    finally:
        for s in made:
            s.kill()


def round_trip_us(client: Client, n: int = 300) -> float:
    client.command("limits.get")
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        client.command("limits.get")
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


@pytest.mark.parametrize("transport", ["fifo", "sysv", "unix"])
def test_userspace_pm_through_the_gateway(transport: str, tmp_path: Path,
                                          testbeds: Callable[..., Testbed],
                                          servers: list[ServerProcess]) -> None:
    tb = testbeds(client_pm="userspace", server_pm="userspace")
    servers += [gateway(tb.client, transport, tmp_path), gateway(tb.server, transport, tmp_path)]
    port = 5601
    with connect(servers[0].url, name="cli-pm") as c, connect(servers[1].url, name="srv-pm") as s:
        assert c.command("subscribe", events=True)["events"] is True
        s.command("subscribe", events=True)
        ce, se = EventStream(c), EventStream(s)
        with mptcp_pair(tb, port=port) as (cli, conn):
            exchange(cli, conn)
            ct = ce.wait("ESTABLISHED").attrs["token"]
            st = se.wait("ESTABLISHED").attrs["token"]

            s.command("pm.announce", token=st, addr="10.0.2.2", id=5)
            assert ce.wait("ANNOUNCED", token=ct).attrs["daddr"] == "10.0.2.2"

            c.command("pm.subflow_create", token=ct, local_addr="10.0.2.1", local_id=6,
                      remote_addr="10.0.2.2", remote_port=port)
            sub = ce.wait("SUB_ESTABLISHED", token=ct, saddr="10.0.2.1")
            four = {"local_addr": "10.0.2.1", "local_port": sub.attrs["sport"],
                    "remote_addr": "10.0.2.2", "remote_port": port}

            c.command("pm.set_flags", token=ct, backup=True, **four)
            assert se.wait("SUB_PRIORITY", token=st).attrs["backup"] == 1

            with pytest.raises(IpcgwError, match="invalid token"):
                c.command("pm.set_flags", token=ct ^ 1, backup=False, **four)
            with pytest.raises(IpcgwError, match="invalid token"):
                s.command("pm.remove", token=st ^ 1, id=5)
            with pytest.raises(IpcgwError, match="subflow not found"):
                c.command("pm.subflow_destroy", token=ct, **{**four, "local_port": 1})
            subflows = [x for x in c.command("stats.get")["subflows"] if x.get("token") == ct]
            assert len(subflows) == 2  # nothing changed

            c.command("pm.subflow_destroy", token=ct, **four)
            ce.wait("SUB_CLOSED", token=ct, sport=four["local_port"])

            s.command("pm.remove", token=st, id=5)
            assert ce.wait("REMOVED", token=ct).attrs["rem_id"] == 5
            exchange(cli, conn)
        us = round_trip_us(c)
        print(f"\n{transport}: command round trip client->gateway->kernel->reply "
              f"median {us:.0f} us")
    for srv in servers:
        assert srv.stop() == 0, srv.log()


def test_scenario1_event_stream_through_the_gateway(tmp_path: Path,
                                                    testbeds: Callable[..., Testbed],
                                                    servers: list[ServerProcess]) -> None:
    tb = testbeds(scenario=1)
    servers += [gateway(tb.client, "unix", tmp_path), gateway(tb.server, "unix", tmp_path)]
    with connect(servers[0].url) as c, connect(servers[1].url) as s:
        c.command("subscribe", events=True)
        s.command("subscribe", events=True)
        ce, se = EventStream(c), EventStream(s)
        with mptcp_pair(tb, port=5602) as (cli, conn):
            exchange(cli, conn)
            ct = ce.wait("SUB_ESTABLISHED").attrs["token"]
            st = se.wait("SUB_ESTABLISHED").attrs["token"]
        ce.wait("CLOSED", token=ct)
        se.wait("CLOSED", token=st)
        table = ["CREATED", "ESTABLISHED", "SUB_ESTABLISHED", "CLOSED"]
        assert [k for k in ce.kinds(ct) if k in table] == table
        assert sorted(k for k in se.kinds(st) if k in table) == sorted(table)
        created = ce.wait("CREATED", token=ct).attrs
        assert (created["saddr"], created["daddr"]) == ("10.0.1.1", "10.0.1.2")
        s_sub = se.wait("SUB_ESTABLISHED", token=st).attrs
        assert (s_sub["saddr"], s_sub["daddr"]) == ("10.0.1.2", "10.0.2.1")


@pytest.fixture(scope="module")
def sspi_writer(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("cc")
    (folder / "writer.c").write_text(SSPI_SEQUENCE_WRITER)
    exe = str(folder / "writer")
    subprocess.run(["cc", "-O1", "-o", exe, str(folder / "writer.c")], check=True)
    return exe


def test_legacy_c_writer_sets_and_clears_backup_of_endpoint_2(
        tmp_path: Path, testbeds: Callable[..., Testbed], servers: list[ServerProcess],
        sspi_writer: str) -> None:
    tb = testbeds(client_endpoints=[])
    fifo = tmp_path / "mptcp-ns3-fifo"
    servers.append(ServerProcess([f"fifo://{fifo}?codec=sspi"], tmp_path, netns=tb.server,
                                 extra=["--handler", "mptcp"]))
    with PathManager(tb.server) as pm:
        pm.add_endpoint(tb.server_addr(1), id=1, flags="signal")
        pm.add_endpoint(tb.server_addr(2), id=2, flags="signal")

        def backup(id: int) -> bool:
            return "backup" in pm.endpoint(id)["flag_names"]

        subprocess.run([sspi_writer, str(fifo), "2", "2"], check=True, timeout=10)  # BACKUP_ON
        wait_until(lambda: backup(2))
        assert not backup(1)
        subprocess.run([sspi_writer, str(fifo), "3", "2"], check=True, timeout=10)  # CLEAR
        wait_until(lambda: not backup(2))
        # DEL 1, and a WIFI_SNR report the handler passes to the (absent) policy
        subprocess.run([sspi_writer, str(fifo), "4", "25", "1", "1"], check=True, timeout=10)
        wait_until(lambda: [e["id"] for e in pm.endpoints()] == [2])
    assert servers[0].alive()
    assert servers[0].stop() == 0


def test_rssi_policy_from_reports_through_the_gateway(
        tmp_path: Path, testbeds: Callable[..., Testbed], servers: list[ServerProcess]) -> None:
    tb = testbeds(client_endpoints=[])
    servers.append(gateway(tb.client, "unix", tmp_path,
                           "--policy", "ipcgw.mptcp.policy:RssiPolicy"))
    with PathManager(tb.client) as pm, connect(servers[0].url) as c:
        pm.add_endpoint(tb.client_addr(1), id=1, flags="subflow")  # LTE
        pm.add_endpoint(tb.client_addr(2), id=2, flags="subflow")  # WLAN
        for i in range(20):
            c.send(Report(i * 0.1, 2, {"rssi_dbm": -95.0}))
        wait_until(lambda: "backup" in pm.endpoint(2)["flag_names"])
        assert "backup" not in pm.endpoint(1)["flag_names"]
        for i in range(20):
            c.send(Report(2 + i * 0.1, 2, {"rssi_dbm": -60.0}))
        wait_until(lambda: "backup" not in pm.endpoint(2)["flag_names"])
