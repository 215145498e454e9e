"""Issue #21: where ipcgw differed from the kernel's own tools, checked against them.

Each real-kernel test reads the kernel's view back without ipcgw: ``ip -j mptcp
endpoint show``, ``ip mptcp monitor``, ``ss``, or a GET_ADDR dump built here
by hand with ``struct``. Namespaces come from ``unique`` prefixes (the
``netns`` and ``testbeds`` fixtures), so concurrent MPTCP tests on the host do
not meet; the "someone listens" rule is host-wide, but every test here has its
own listener anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import ServerProcess, fresh_url
from netns_helpers import FakeSession, Side, exchange, mptcp_pair, testbeds

from ipcgw.messages import Command, Result
from ipcgw.mptcp import genl
from ipcgw.mptcp.events import MptcpEvent, decode_event, format_event
from ipcgw.mptcp.genl import mptcp_event_msg, parse
from ipcgw.mptcp.handler import MptcpHandler, mptcp_available
from ipcgw.mptcp.pm import PathManager, format_token, parse_token
from ipcgw.netns import run_in_netns
from ipcgw.testbed import Testbed

__all__ = ["testbeds"]

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6


# -- helpers that read the kernel without ipcgw ----------------------------------------------


def kernel_endpoints(netns: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", "-n", netns, "mptcp", "endpoint", "show"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def kernel_limits(netns: str) -> str:
    return subprocess.run(["ip", "-n", netns, "mptcp", "limits", "show"],
                          check=True, capture_output=True, text=True).stdout


class KernelMonitor:
    """``ip -n NS mptcp monitor``: the kernel's own event printer, line by line."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(["stdbuf", "-oL", "ip", "-n", netns, "mptcp", "monitor"],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.2)  # let it subscribe before events are made

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.strip())
                self._cond.notify_all()

    def wait(self, *words: str, timeout: float = 10.0) -> str:
        def found() -> str | None:
            return next((ln for ln in self.lines
                         if all(w in ln.replace("[", " ").replace("]", " ").split() for w in words)),
                        None)
        with self._cond:
            if not self._cond.wait_for(found, timeout):
                raise AssertionError(f"ip mptcp monitor printed no line with {words}: {self.lines}")
            return found()  # type: ignore[return-value]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._thread.join(5)


@contextlib.contextmanager
def kernel_monitor(netns: str) -> Iterator[KernelMonitor]:
    mon = KernelMonitor(netns)
    try:
        yield mon
    finally:
        mon.close()


def _nla(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _nlas(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        yield kind & 0x3FFF, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _genl(sock: socket.socket, mtype: int, flags: int, cmd: int, attrs: bytes) -> list[bytes]:
    """One request by hand; the attribute bytes of every reply until ACK/DONE."""
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    sock.send(struct.pack("=IHHII", 16 + len(body), mtype, flags, 1, 0) + body)
    replies: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == 2:  # NLMSG_ERROR: an ACK when the code is 0
                (code,) = struct.unpack_from("=i", data, offset + 16)
                assert code == 0, f"kernel error {code}"
                return replies
            if kind == 3:  # NLMSG_DONE
                return replies
            replies.append(data[offset + 20 : offset + length])
            offset += (length + 3) & ~3


def connection_addrs(netns: str, token: int) -> list[dict[str, Any]]:
    """The userspace PM's local addresses of connection ``token`` (GET_ADDR dump by token)."""
    sock = run_in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16))
    with sock:
        sock.bind((0, 0))
        (ctrl,) = _genl(sock, 0x10, 0x5, 3, _nla(2, b"mptcp_pm\0"))  # CTRL_CMD_GETFAMILY
        family_id = next(struct.unpack("=H", v[:2])[0] for k, v in _nlas(ctrl) if k == 1)
        dump = _genl(sock, family_id, 0x301, 3, _nla(4, struct.pack("=I", token)))
    out = []
    for attrs in dump:
        for kind, nest in _nlas(attrs):
            if kind != 1:  # MPTCP_PM_ATTR_ADDR
                continue
            a = dict(_nlas(nest))
            addr = (socket.inet_ntop(AF_INET, a[3]) if 3 in a else socket.inet_ntop(AF_INET6, a[4]))
            out.append({"id": a[2][0], "addr": addr,
                        "ifindex": struct.unpack("=i", a[7])[0] if 7 in a else 0})
    return out


def ifindex(netns: str, name: str) -> int:
    return run_in_netns(netns, lambda: socket.if_nametoindex(name))


# -- 1 and 2: endpoint.add answers with the endpoint the kernel made ---------------------------


def test_endpoint_add_new_port_returns_the_new_endpoint(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.0.3.1/32", "dev", "lo"], check=True)
    with PathManager(netns) as pm:
        first = pm.add_endpoint("10.0.3.1", id=1, flags="signal")
        assert (first["id"], first["port"]) == (1, 0)
        new = pm.add_endpoint("10.0.3.1", flags="signal", port=4321)  # same address, no id
    kernel = [e for e in kernel_endpoints(netns) if e.get("port") == 4321]
    assert len(kernel) == 1 and kernel[0]["address"] == "10.0.3.1"
    # before: {'id': 1, 'port': 0, ...}, the older endpoint
    assert (new["id"], new["port"], new["addr"]) == (kernel[0]["id"], 4321, "10.0.3.1")
    assert new["id"] != 1

    handler = MptcpHandler(netns=netns, listen_events=False)
    try:
        r = handler.on_message(FakeSession(), Command(1, "endpoint.add", {
            "addr": "10.0.3.1", "flags": "signal", "port": 4322}))
        assert isinstance(r, Result) and r.ok, r
        kernel = [e for e in kernel_endpoints(netns) if e.get("port") == 4322]
        assert (r.value["id"], r.value["port"]) == (kernel[0]["id"], 4322)
    finally:
        handler.close()


def test_endpoint_add_id_0_lets_the_kernel_pick(netns: str) -> None:
    handler = MptcpHandler(netns=netns, listen_events=False)
    s = FakeSession()
    try:
        handler.pm.add_endpoint("10.0.1.1", id=1)
        handler.pm.add_endpoint("10.0.2.1", id=2)
        r = handler.on_message(s, Command(1, "endpoint.add", {"addr": "10.0.5.1", "id": 0}))
        assert isinstance(r, Result)
        # before: ok=False "endpoint 10.0.5.1 vanished right after it was added"
        assert r.ok, r.error
        (made,) = [e for e in kernel_endpoints(netns) if e["address"] == "10.0.5.1"]
        assert made["id"] not in (0, 1, 2)
        assert (r.value["id"], r.value["addr"], r.value["flag_names"]) == (
            made["id"], "10.0.5.1", ["subflow"])
        # and the Python API the same way
        ep = handler.pm.add_endpoint("10.0.6.1", id=0, flags="subflow,backup")
        (made,) = [e for e in kernel_endpoints(netns) if e["address"] == "10.0.6.1"]
        assert ep["id"] == made["id"] and made.get("backup") is True
    finally:
        handler.close()


# -- 3: one token notation ---------------------------------------------------------------------


def test_token_notation() -> None:
    assert format_token(0xE3237B7A) == "0xe3237b7a"
    assert format_token(5) == "0x00000005"
    for text in ("0xe3237b7a", "0XE3237B7A", " 0xe3237b7a ", "3810753402", 3810753402):
        assert parse_token(text) == 0xE3237B7A
    assert parse_token("12345678") == 12345678  # digits are decimal, always
    assert parse_token(format_token(0x12345678)) == 0x12345678  # what monitor prints reads back
    with pytest.raises(ValueError, match=r"ambiguous: write hex as 0xe3237b7a"):
        parse_token("e3237b7a")  # as ip mptcp monitor prints it: refused, with the fix
    for bad in ("0x", "0x1g", "-1", "1.5", "", "0x100000000", "4294967296", True, 2**32, None,
                "\uff11\uff12"):  # fullwidth digits: isdecimal() but not ASCII
        with pytest.raises(ValueError):
            parse_token(bad)  # type: ignore[arg-type]


def test_monitor_token_pastes_into_send(testbeds: Callable[..., Testbed], tmp_path: Path) -> None:
    """``ipcgw monitor`` shows a token; ``ipcgw send`` takes it as printed (before: refused)."""
    tb = testbeds(client_pm="userspace", server_pm="userspace")
    server = ServerProcess([fresh_url("unix", tmp_path)], tmp_path, netns=tb.server,
                           extra=["--handler", "mptcp"])
    client = Side(tb.client)
    monitor: subprocess.Popen[str] | None = None
    try:
        with kernel_monitor(tb.client) as kmon, mptcp_pair(tb, port=5701) as (cli, conn):
            exchange(cli, conn)
            ct = client.event("ESTABLISHED").attrs["token"]
            monitor = subprocess.Popen(
                [sys.executable, "-m", "ipcgw", "monitor", "-n", tb.server, "--count", "1",
                 "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # the client announces and removes an address until the monitor (once subscribed)
            # prints the server's ANNOUNCED or REMOVED: no guess at how long it takes to start
            for i in range(60):
                op = ("pm.announce", "pm.remove")[i % 2]
                extra = {"addr": "10.0.2.1"} if op == "pm.announce" else {}
                r = client.cmd(op, token=ct, id=10, **extra)
                assert r.ok, r.error
                with contextlib.suppress(subprocess.TimeoutExpired):
                    monitor.wait(0.5)
                    break
            out, err = monitor.communicate(timeout=5)
            assert monitor.returncode == 0, err
            token = re.search(r"token=(\S+)", out).group(1)  # type: ignore[union-attr]
            assert re.fullmatch(r"0x[0-9a-f]{8}", token), out

            def send(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "ipcgw", "send", server.url, *args],
                                      capture_output=True, text=True, timeout=30)

            sent = send("pm.announce", f"token={token}", "addr=10.0.2.2", "id=5")
            assert sent.returncode == 0, sent.stdout + sent.stderr  # before: "token must be ..."
            kmon.wait("ANNOUNCED", f"token={ct:08x}", "remid=5", "daddr4=10.0.2.2")
            # the same token as ip mptcp monitor prints it (bare hex) is never taken as a number
            # it is not: with a letter in it refused as ambiguous, all digits read as decimal
            bare = send("pm.remove", f"token={token[2:]}", "id=5")
            words = "ambiguous" if re.search("[a-f]", token[2:]) else "invalid token"
            assert bare.returncode != 0 and words in bare.stdout + bare.stderr, bare
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
            monitor.communicate()
        client.close()
        server.stop()


# -- 4, 5 and 7: announce and subflow_create with dev, v4 and v6 ------------------------------


def test_announce_and_subflow_create_with_dev(testbeds: Callable[..., Testbed]) -> None:
    """As the kernel's userspace_pm.sh does: ``pm_nl_ctl ann ADDR token T id I dev X``, then
    the peer's ANNOUNCED (token, address, id, port); an invalid token gives no event."""
    tb = testbeds(client_pm="userspace", server_pm="userspace")
    for ns, addr in ((tb.client, "dead:beef:2::1/64"), (tb.server, "dead:beef:2::2/64")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", "eth2", "nodad"], check=True)
    port = 5702
    client, server = Side(tb.client), Side(tb.server)
    try:
        with kernel_monitor(tb.client) as kmon, mptcp_pair(tb, port=port) as (cli, conn):
            exchange(cli, conn)
            ct = client.event("ESTABLISHED").attrs["token"]
            st = server.event("ESTABLISHED").attrs["token"]
            kct = f"token={ct:08x}"  # how ip mptcp monitor prints it

            r = server.cmd("pm.announce", token=st ^ 1, addr="10.0.2.2", id=5, dev="eth2")
            assert not r.ok and r.error == "invalid token"
            r = server.cmd("pm.announce", token=st, addr="10.0.2.2", id=5, dev="eth2")
            assert r.ok, r.error  # before: "unknown argument(s): dev"
            kmon.wait("ANNOUNCED", kct, "remid=5", "daddr4=10.0.2.2", f"dport={port}")
            ann = client.event("ANNOUNCED", token=ct, rem_id=5)
            assert ann.attrs["family"] == AF_INET  # the kernel sends none: from daddr4

            r = server.cmd("pm.announce", token=format_token(st), addr="dead:beef:2::2", id=7,
                           ifindex=ifindex(tb.server, "eth2"))
            assert r.ok, r.error
            kmon.wait("ANNOUNCED", kct, "remid=7", "daddr6=dead:beef:2::2", f"dport={port}")
            ann6 = client.event("ANNOUNCED", token=ct, rem_id=7)
            assert ann6.attrs["family"] == AF_INET6 and ann6.attrs["daddr"] == "dead:beef:2::2"
            # before: daddr=dead:beef:2::2:5702
            assert f"daddr=[dead:beef:2::2]:{port}" in format_event(MptcpEvent(
                ann6.kind, ann6.attrs))

            # the kernel keeps the interface with the connection's addresses
            eth2 = ifindex(tb.server, "eth2")
            addrs = {a["id"]: a for a in connection_addrs(tb.server, st)}
            assert (addrs[5]["addr"], addrs[5]["ifindex"]) == ("10.0.2.2", eth2)
            assert (addrs[7]["addr"], addrs[7]["ifindex"]) == ("dead:beef:2::2", eth2)

            # SUBFLOW_CREATE with dev: the kernel binds the subflow to the interface
            r = client.cmd("pm.subflow_create", token=ct, local_addr="10.0.2.1", local_id=6,
                           remote_addr="10.0.2.2", remote_port=port, dev="eth2")
            assert r.ok, r.error
            sub = client.event("SUB_ESTABLISHED", token=ct, saddr="10.0.2.1")
            sport = sub.attrs["sport"]
            kmon.wait("SF_ESTABLISHED", kct, "saddr4=10.0.2.1", f"sport={sport}",
                      f"ifindex={ifindex(tb.client, 'eth2')}")
            ss = subprocess.run(["ss", "-N", tb.client, "-tnH", "state", "established"],
                                check=True, capture_output=True, text=True).stdout
            assert f"10.0.2.1%eth2:{sport}" in ss, ss
            assert "10.0.1.1:" in ss and "10.0.1.1%" not in ss  # the first subflow is unbound
            exchange(cli, conn)

            r = client.cmd("pm.subflow_create", token=ct, local_addr="10.0.2.1", local_id=8,
                           remote_addr="10.0.2.2", remote_port=port, dev="eth2", ifindex=3)
            assert not r.ok and "dev or ifindex" in r.error
    finally:
        client.close()
        server.close()


def test_announced_family_from_a_recorded_datagram() -> None:
    msg = mptcp_event_msg()
    msg["cmd"] = genl.MPTCP_EVENT_ANNOUNCED
    msg["version"] = 1
    msg["attrs"] = [("MPTCP_ATTR_TOKEN", 0x1C189765), ("MPTCP_ATTR_REM_ID", 2),
                    ("MPTCP_ATTR_DADDR6", "dead:beef:2::2"), ("MPTCP_ATTR_DPORT", 5201)]
    msg["header"]["type"] = 0x1C
    msg.encode()
    (back,) = parse(bytes(msg.data), {0x1C: mptcp_event_msg})
    ev = decode_event(back)
    assert ev is not None and ev.attrs["family"] == AF_INET6
    assert "] token=0x1c189765 daddr=[dead:beef:2::2]:5201 " in format_event(ev)
    # a family the kernel did send is kept; an address without a port is left bare
    ev = MptcpEvent("LISTENER_CREATED", {"family": AF_INET6, "saddr": "::1"})
    assert "saddr=::1" in format_event(ev).split()
    v4 = MptcpEvent("SUB_CLOSED", {"saddr": "10.0.2.1", "sport": 4000, "daddr": "10.0.2.2"})
    assert "] saddr=10.0.2.1:4000 daddr=10.0.2.2" in format_event(v4)


# -- 6: a bad dev is the client's error --------------------------------------------------------


def test_unknown_dev_is_a_bad_argument(netns: str, caplog: pytest.LogCaptureFixture) -> None:
    handler = MptcpHandler(netns=netns, listen_events=False)
    s = FakeSession()
    try:
        with caplog.at_level(logging.INFO, logger="ipcgw.mptcp.handler"):
            r = handler.on_message(s, Command(1, "endpoint.add",
                                              {"addr": "10.0.6.1", "dev": "nosuch0"}))
            assert isinstance(r, Result) and not r.ok
            # before: "endpoint.add: internal error: no interface with this name" + traceback
            assert r.error == f"endpoint.add: no such interface 'nosuch0' in namespace {netns} (dev=)"
            for op, args in (("pm.announce", {"token": 1, "addr": "10.0.6.1", "id": 5}),
                             ("pm.subflow_create", {"token": 1, "local_addr": "10.0.6.1",
                                                    "remote_addr": "10.0.6.2",
                                                    "remote_port": 1})):
                r = handler.on_message(s, Command(2, op, {**args, "dev": "nosuch0"}))
                assert r is not None and r.error.startswith(f"{op}: no such interface 'nosuch0'")
            for bad in ("lo\0x", "x" * 40, "", 7):
                r = handler.on_message(s, Command(3, "endpoint.add", {"addr": "10.0.6.1",
                                                                       "dev": bad}))
                assert r is not None and not r.ok and "internal error" not in r.error
        assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert not any(rec.exc_info for rec in caplog.records)
        assert kernel_endpoints(netns) == []
        r = handler.on_message(s, Command(4, "endpoint.add", {"addr": "10.0.6.1", "dev": "lo"}))
        assert r is not None and r.ok and r.value["ifindex"] == 1
    finally:
        handler.close()


# -- #14.1: is the kernel's path manager usable here? -----------------------------------------


def test_mptcp_available_here_and_in_a_namespace(netns: str) -> None:
    before = (kernel_endpoints(netns), kernel_limits(netns))
    assert mptcp_available() is None
    assert mptcp_available(netns) is None
    assert (kernel_endpoints(netns), kernel_limits(netns)) == before  # it changed nothing
    missing = mptcp_available("ipcgwt-no-such-namespace")
    assert missing == "no network namespace 'ipcgwt-no-such-namespace' (ip netns list)"


def test_mptcp_available_says_why_not(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.mptcp.enabled=0"],
                   check=True)
    assert mptcp_available(netns) == (f"MPTCP is disabled in namespace {netns}: "
                                      "net.mptcp.enabled=0 (sysctl -w net.mptcp.enabled=1)")
    # without CAP_NET_ADMIN (root, but the capability dropped): the probe is refused
    code = "from ipcgw.mptcp.handler import mptcp_available as m; print(m())"
    out = subprocess.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "changing MPTCP endpoints needs CAP_NET_ADMIN (run as root)", out
    monkeypatch.setattr(genl, "MPTCP_PM_NAME", "mptcp_pm_nosuch")
    assert mptcp_available() == "no mptcp_pm_nosuch genetlink family (kernel without MPTCP)"
