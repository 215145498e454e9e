"""mptcpd interop (issue #17): the real mptcpd daemon with the ipcgw-bridge plugin.

The plugin (contrib/mptcpd-ipcgw/) is built here with ``cc`` against the
installed libmptcpd and ELL headers; mptcpd runs inside the testbed's client
namespace with the userspace PM, and talks to an in-process Gateway whose
handler is MptcpdHandler. What mptcpd reports is compared with ipcgw's own
EventListener in the same namespace; what it does, with ``ip mptcp monitor``
on the peer (SUB_PRIORITY is raised there only).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LocalUser, require_netns
from gateway_helpers import ServerProcess
from netns_helpers import FakeSession, exchange, mptcp_pair, testbeds, wait_until

from ipcgw.client import Client, connect
from ipcgw.messages import Command, Error, Event, Report, Result
from ipcgw.mptcp.events import EventListener, MptcpEvent
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.mptcp.mptcpd import NO_BRIDGE, MptcpdHandler
from ipcgw.mptcp.pm import PathManager
from ipcgw.mptcp.policy import RssiPolicy
from ipcgw.server import Gateway
from ipcgw.testbed import Testbed

__all__ = ["testbeds"]

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "contrib" / "mptcpd-ipcgw" / "ipcgw_bridge.c"
MPTCPD = next((p for p in ("/usr/libexec/mptcpd", "/usr/bin/mptcpd", "/usr/sbin/mptcpd")
               if os.path.exists(p)), None)
JSONL = "codec=json&framing=delimited:lf"
COMPARED = ("token", "saddr", "daddr", "sport", "dport", "family")


def _need(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("IPCGW_REQUIRE_NETNS") == "1":
            pytest.fail(f"IPCGW_REQUIRE_NETNS=1 but {why} (apt-get install mptcpd "
                        "libmptcpd3-dev libell-dev)")
        pytest.skip(why)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only the freshly built plugin (mptcpd checks its modes)."""
    require_netns()
    _need(MPTCPD is not None, "mptcpd is not installed")
    _need(shutil.which("cc") is not None and shutil.which("pkg-config") is not None,
          "needs cc and pkg-config")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "mptcpd", "ell"],
                           capture_output=True, text=True)
    _need(flags.returncode == 0 and os.path.exists("/usr/include/ell/io.h"),
          f"no mptcpd/ell development files ({flags.stderr.strip()})")
    out = tmp_path_factory.mktemp("mptcpd-plugins")
    out.chmod(0o755)
    so = out / "ipcgw-bridge.so"
    build = subprocess.run(["cc", "-std=gnu11", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra",
                            "-Werror", "-o", str(so), str(SOURCE), *flags.stdout.split()],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    so.chmod(0o644)
    return out


class Mptcpd:
    """The mptcpd daemon in a namespace with only the bridge plugin loaded."""

    def __init__(self, netns: str, plugins: Path, url: str, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        argv = ["ip", "netns", "exec", netns, str(MPTCPD), f"--plugin-dir={plugins}",
                "--load-plugins=ipcgw-bridge", "--path-manager=ipcgw-bridge", "--log=stderr"]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "IPCGW_BRIDGE_URL": url, **(env or {})})

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Monitor:
    """``ip mptcp monitor`` in a namespace: the kernel's own words, line by line."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(["ip", "-n", netns, "mptcp", "monitor"], text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.2)  # subscribed before anything happens

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait(self, *words: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if all(w in line.split() or w in line for w in words):
                return line
        raise AssertionError(f"no monitor line with {words} in {timeout} s; saw {seen}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class Events:
    """Events as one client of the gateway gets them, read by a thread."""

    def __init__(self, client: Client) -> None:
        self.got: list[Event] = []
        self._cond = threading.Condition()
        self._client = client
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                msg = self._client.recv()
                if isinstance(msg, Event):
                    with self._cond:
                        self.got.append(msg)
                        self._cond.notify_all()

    def wait(self, kind: str, timeout: float = 10.0, **attrs: Any) -> Event:
        def match() -> Event | None:
            return next((e for e in self.got if e.kind == kind and all(
                e.attrs.get(k) == v for k, v in attrs.items())), None)
        with self._cond:
            found = self._cond.wait_for(match, timeout)
        assert found, f"no {kind} {attrs} from the gateway in {timeout} s: {self.got}"
        return found


class Listened:
    """ipcgw's own EventListener in the same namespace, for comparison."""

    def __init__(self, netns: str) -> None:
        self.got: list[MptcpEvent] = []
        self.listener = EventListener(netns, self.got.append).start()

    def wait(self, kind: str, **attrs: Any) -> MptcpEvent:
        return wait_until(lambda: next((e for e in self.got if e.kind == kind and all(
            e.attrs.get(k) == v for k, v in attrs.items())), None))  # type: ignore[no-any-return]


@pytest.fixture
def bridged(testbeds: Callable[..., Testbed], plugin_dir: Path, tmp_path: Path
            ) -> Iterator[dict[str, Any]]:
    """Testbed (scenario 1, client on the userspace PM), gateway, mptcpd with the bridge."""
    tb = testbeds(1, client_pm="userspace")
    handler = MptcpdHandler(policy=RssiPolicy(alpha=0.0, threshold_dbm=-80.0), netns=tb.client,
                            command_timeout=2.0)
    gw = Gateway(handler)
    daemon: Mptcpd | None = None
    try:
        bridge_url = str(gw.listen(f"unix://{tmp_path}/bridge.sock?{JSONL}"))
        client_url = str(gw.listen(f"unix://{tmp_path}/gw.sock"))
        sspi_url = str(gw.listen(f"unix://{tmp_path}/sspi.sock?framing=fixed:8&codec=sspi"))
        daemon = Mptcpd(tb.client, plugin_dir, bridge_url, tmp_path / "mptcpd.log")
        wait_until(lambda: handler._bridge is not None, timeout=10)
        yield {"tb": tb, "handler": handler, "gw": gw, "mptcpd": daemon, "url": client_url,
               "sspi": f"{tmp_path}/sspi.sock", "sspi_url": sspi_url}
    finally:
        if daemon is not None:
            daemon.stop()
        gw.close()


def _cmd(client: Client, op: str, timeout: float = 10.0, **args: Any) -> Result:
    reply = client.request(Command(0, op, args), timeout=timeout)
    assert isinstance(reply, Result), reply
    return reply


def test_events_and_priority_through_mptcpd(bridged: dict[str, Any]) -> None:
    tb: Testbed = bridged["tb"]
    port = 5311
    own = Listened(tb.client)
    peer = Monitor(tb.server)
    client = connect(bridged["url"], name="ns3")
    try:
        assert _cmd(client, "subscribe").ok
        events = Events(client)
        with mptcp_pair(tb, port=port) as (cli, conn):
            exchange(cli, conn)
            # 1. the same kinds, tokens and addresses as ipcgw's own listener
            for kind in ("CREATED", "ESTABLISHED"):
                mine = own.wait(kind, saddr=tb.client_addr(1))
                got = events.wait(kind, token=mine.attrs["token"])
                assert {k: got.attrs[k] for k in COMPARED} == {k: mine.attrs[k] for k in COMPARED}
                assert got.attrs["server_side"] == mine.attrs.get("server_side", 0) == 0
            token = got.attrs["token"]

            # 2. a subflow made through mptcpd (the userspace PM: nothing else makes it)
            r = _cmd(client, "pm.subflow_create", token=token, local_addr=tb.client_addr(2),
                     local_id=2, remote_addr=tb.server_addr(2), remote_port=port)
            assert r.ok, r.error
            mine = own.wait("SUB_ESTABLISHED", token=token, saddr=tb.client_addr(2))
            got = events.wait("SUB_ESTABLISHED", token=token, saddr=tb.client_addr(2))
            assert {k: got.attrs[k] for k in COMPARED} == {k: mine.attrs[k] for k in COMPARED}
            assert "backup" not in got.attrs  # mptcpd 0.12 passes a pointer as the bool
            sport = got.attrs["sport"]

            # 3. a Command endpoint.set_flags backup: MP_PRIO on that subflow, seen by the peer
            r = _cmd(client, "endpoint.set_flags", id=2, backup=True)
            assert r.ok and r.value == 1, r
            peer.wait("SF_PRIO]", f"daddr4={tb.client_addr(2)}", f"dport={sport}", "backup=1")

            # 4. legacy sspi CLEAR_FLAGS then BACKUP_FLAG_ON (8-byte records, no replies)
            with socket.socket(socket.AF_UNIX) as legacy:
                legacy.connect(bridged["sspi"])
                legacy.sendall(struct.pack("=ii", 3, 2))
                peer.wait("SF_PRIO]", f"daddr4={tb.client_addr(2)}", "backup=0")
                legacy.sendall(struct.pack("=ii", 2, 2))
                peer.wait("SF_PRIO]", f"daddr4={tb.client_addr(2)}", "backup=1")

            # 5. Reports through the RSSI policy: strong signal clears, weak sets backup
            client.send(Report(1.0, 2, {"rssi_dbm": -50.0}))
            peer.wait("SF_PRIO]", f"daddr4={tb.client_addr(2)}", "backup=0")
            client.send(Report(2.0, 2, {"rssi_dbm": -95.0}))
            peer.wait("SF_PRIO]", f"daddr4={tb.client_addr(2)}", "backup=1")
            ss = subprocess.run(["ip", "netns", "exec", tb.client, "ss", "-tnie", "src",
                                 f"{tb.client_addr(2)}:{sport}"], capture_output=True, text=True)
            assert ss.returncode == 0, ss.stderr

            # 6. what mptcpd cannot say (it queues PM commands unanswered) is checked first
            r = _cmd(client, "pm.set_flags", token=token ^ 1, backup=False,
                     local_addr=tb.client_addr(2), local_port=sport,
                     remote_addr=tb.server_addr(2), remote_port=port)
            assert not r.ok and r.error.startswith("invalid token"), r
            r = _cmd(client, "pm.set_flags", token=token, backup=False,
                     local_addr=tb.client_addr(2), local_port=sport + 1,
                     remote_addr=tb.server_addr(2), remote_port=port)
            assert not r.ok and r.error.startswith("subflow not found"), r
            r = _cmd(client, "pm.announce", token=token, addr=tb.client_addr(2), id=9, dev="eth2")
            assert not r.ok and "takes no interface" in r.error, r
            r = _cmd(client, "run.iperf", value=1)
            assert not r.ok and "--handler mptcp" in r.error, r
            eps = _cmd(client, "endpoint.show")
            assert eps.ok and [(e["id"], e["addr"]) for e in eps.value] == [
                (2, tb.client_addr(2))], eps
            assert _cmd(client, "limits.get").value == {"subflows": 8, "add_addr_accepted": 8}

            # 7. latency: pm.set_flags through mptcpd vs direct (MptcpHandler), same subflow
            four = {"token": token, "local_addr": tb.client_addr(2), "local_port": sport,
                    "remote_addr": tb.server_addr(2), "remote_port": port}
            via_mptcpd = _latency(client, four)
            direct_gw = Gateway(MptcpHandler(netns=tb.client, listen_events=False))
            try:
                url = str(direct_gw.listen(f"unix://{Path(bridged['sspi']).parent}/direct.sock"))
                with connect(url, name="direct") as direct:
                    direct_us = _latency(direct, four)
            finally:
                direct_gw.close()
            print(f"\npm.set_flags median over 300: through mptcpd {via_mptcpd:.0f} us, "
                  f"direct {direct_us:.0f} us")
            assert via_mptcpd < 20000
        mine = own.wait("CLOSED", token=token)
        assert events.wait("CLOSED", token=token).attrs["token"] == mine.attrs["token"]
    finally:
        client.close()
        peer.stop()
        own.listener.stop()


def _latency(client: Client, four: dict[str, Any], n: int = 300) -> float:
    """Median µs of a pm.set_flags round trip (a gateway client's view)."""
    samples = []
    for i in range(n):
        start = time.perf_counter()
        r = _cmd(client, "pm.set_flags", backup=bool(i % 2), **four)
        samples.append((time.perf_counter() - start) * 1e6)
        assert r.ok, r.error
    return statistics.median(samples)


def test_mptcpd_stopped_or_killed_clients_get_an_error(bridged: dict[str, Any]) -> None:
    daemon: Mptcpd = bridged["mptcpd"]
    handler: MptcpdHandler = bridged["handler"]
    with connect(bridged["url"], name="ns3") as client:
        assert _cmd(client, "endpoint.show").ok
        # stopped: the command fails after command_timeout (2 s), not a hang
        daemon.signal(signal.SIGSTOP)
        start = time.monotonic()
        r = _cmd(client, "endpoint.show")
        took = time.monotonic() - start
        assert not r.ok and "did not answer" in r.error and 1.5 < took < 4, (r, took)

        # killed while a command waits: that command fails at once
        box: list[tuple[Result, float]] = []

        def ask() -> None:
            t0 = time.monotonic()
            box.append((_cmd(client, "limits.get"), t0))

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.3)
        killed = time.monotonic()
        daemon.signal(signal.SIGKILL)
        asker.join(5)
        assert box, "the waiting client got nothing"
        r, _ = box[0]
        failed_after = time.monotonic() - killed
        assert not r.ok and "bridge disconnected" in r.error and failed_after < 1.0, r
        wait_until(lambda: handler._bridge is None, timeout=5)
        r = _cmd(client, "pm.set_flags", token=1, local_addr="10.0.2.1", local_port=1,
                 remote_addr="10.0.2.2", remote_port=2, backup=True)
        assert not r.ok and r.error == NO_BRIDGE, r


FAKE_GATEWAY = r"""
import json, os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path); os.chmod(path, 0o777); s.listen()
s.settimeout(15)
c, _ = s.accept(); c.settimeout(5)
f = c.makefile("rwb")
try:
    hello = f.readline()
except OSError:
    hello = b""
out = {"hello": hello.decode()}
if hello:
    f.write(b'{"type":"welcome","version":1,"session":1,"server":"evil"}\n')
    f.write(b'{"type":"command","request_id":7,"op":"kpm.flush_addrs","args":{}}\n'); f.flush()
    out["result"] = f.readline().decode()
print(json.dumps(out), flush=True)
"""


def test_bridge_refuses_a_gateway_it_was_not_configured_for(
        testbeds: Callable[..., Testbed], plugin_dir: Path, attacker: LocalUser, tmp_path: Path
) -> None:
    tb = testbeds(1, client_pm="userspace")
    home = Path(tempfile.mkdtemp(prefix="ipcgw-evil-"))  # reachable by the attacker
    os.chown(home, attacker.uid, attacker.gid)
    sock = home / "gw.sock"

    def attempt(env: dict[str, str]) -> tuple[dict[str, str], str, list[int]]:
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        evil = attacker.popen_python(FAKE_GATEWAY, str(sock))
        wait_until(sock.exists, timeout=5)
        daemon = Mptcpd(tb.client, plugin_dir, f"unix://{sock}", tmp_path / "m.log", env)
        try:
            out, err = evil.communicate(timeout=20)
            assert evil.returncode == 0, err
            with PathManager(tb.client) as pm:
                ids = [e["id"] for e in pm.endpoints()]
            return json.loads(out), daemon.log(), ids
        finally:
            daemon.stop()
            with contextlib.suppress(ProcessLookupError):
                evil.kill()

    try:
        # Configured for that uid, the bridge would obey it: endpoint 2 flushed.
        got, _, ids = attempt({"IPCGW_BRIDGE_UID": str(attacker.uid)})
        assert '"ok":true' in got["result"] and ids == [], got
        tb.up()  # restore the endpoint
        # Not configured (the default: mptcpd's own uid): not a byte, nothing done.
        got, log, ids = attempt({})
        assert got == {"hello": ""} and ids == [2], (got, ids)
        assert f"runs as uid {attacker.uid}, not the configured uid 0" in log, log
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_only_a_trusted_session_is_taken_as_the_bridge() -> None:
    handler = MptcpdHandler()
    try:
        impostor = FakeSession(7)
        impostor.name = "mptcpd-bridge"
        impostor.refusal = "peer uid 1234 is not the server's"  # type: ignore[attr-defined]
        handler.on_connect(impostor)  # type: ignore[arg-type]
        assert isinstance(impostor.sent[0], Error) and "not taken" in impostor.sent[0].reason
        assert handler._bridge is None
        # its forged Results and Events go nowhere: it is an ordinary client
        reply = handler.on_message(impostor, Event("SUB_ESTABLISHED", {"token": 1}))  # type: ignore[arg-type]
        assert isinstance(reply, Error)
        client = FakeSession(8)
        r = handler.on_message(client, Command(1, "endpoint.set_flags",  # type: ignore[arg-type]
                                               {"id": 2, "backup": True}))
        assert isinstance(r, Result) and not r.ok and r.error == NO_BRIDGE
    finally:
        handler.close()


def test_serve_handler_mptcpd_without_bridge(tmp_path: Path) -> None:
    """The CLI path: a command with no mptcpd says how to fix it, at once."""
    require_netns()
    server = ServerProcess([f"unix://{tmp_path}/gw.sock"], tmp_path,
                           extra=["--handler", "ipcgw.mptcp.mptcpd:MptcpdHandler",
                                  "--policy", "ipcgw.mptcp.policy:RssiPolicy"])
    try:
        with connect(server.url) as client:
            start = time.monotonic()
            r = _cmd(client, "endpoint.set_flags", id=2, backup=True)
            assert not r.ok and r.error == NO_BRIDGE and time.monotonic() - start < 1, r
    finally:
        server.stop_ok()


class FakeGateway:
    """A trusted (root) gateway that says what a hostile or broken one would."""

    def __init__(self, path: Path) -> None:
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(path))
        self.srv.listen()
        self.srv.settimeout(10)
        self.conn: socket.socket | None = None
        self.buf = b""

    def accept(self) -> dict[str, Any]:
        if self.conn is not None:
            self.conn.close()
        self.conn, _ = self.srv.accept()
        self.conn.settimeout(5)
        self.buf = b""
        hello = self.line()
        assert hello is not None
        self.conn.sendall(b'{"type":"welcome","version":1,"session":1,"server":"t"}\n')
        return hello

    def line(self) -> dict[str, Any] | None:
        """The next line as JSON; None on EOF (the bridge hung up)."""
        assert self.conn is not None
        while b"\n" not in self.buf:
            try:
                chunk = self.conn.recv(65536)
            except ConnectionResetError:  # it hung up with our bytes unread
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        with contextlib.suppress(OSError):
            self.conn.sendall(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.srv.close()


def _command(op: str, **args: Any) -> bytes:
    return json.dumps({"type": "command", "request_id": 5, "op": op, "args": args}).encode() + b"\n"


def test_bridge_bounds_every_input(netns: str, plugin_dir: Path, tmp_path: Path) -> None:
    """Hostile lines end that connection (the bridge reconnects) or get a refusal; mptcpd lives."""
    gw = FakeGateway(tmp_path / "gw.sock")
    daemon = Mptcpd(netns, plugin_dir, f"unix://{tmp_path}/gw.sock", tmp_path / "m.log")
    try:
        assert gw.accept()["name"] == "mptcpd-bridge"
        nested = b'{"type":"command","request_id":5,"op":"x","z":' + b'{"a":' * 50 + b"1" + \
            b"}" * 50 + b"}\n"
        many = _command("kpm.dump_addrs", **{f"k{i}": i for i in range(17)})
        closing = [b"x" * 70000, nested, many, b"not json\n", b'{"type":"command"\n',
                   b'{"type":"command","request_id":5,"op":"pm.set_backup","args":{"token":'
                   b'123456789012345678901234}}\n', b'{"type":"' + b"c" * 200 + b'"}\n']
        for data in closing:
            gw.send(data)
            assert gw.line() is None, data[:60]
            assert gw.accept()["type"] == "hello"  # it came back, mptcpd alive
        refused = {
            _command("pm.set_backup", token=2**32, laddr="10.0.0.1", lport=1, raddr="10.0.0.2",
                     rport=2, backup=1): "token must be an integer 0..4294967295",
            _command("pm.set_backup", token=1, laddr="300.1.1.1", lport=1, raddr="10.0.0.2",
                     rport=2, backup=1): "laddr must be an IPv4 or IPv6 address",
            _command("kpm.remove_addr", id=0): "id must be an integer 1..255",
            _command("kpm.get_addr", id="1"): "id must be an integer 1..255",
            _command("kpm.set_flags", addr="10.0.0.1", flags=-1): "flags must be an integer",
            _command("kpm.add_addr", addr="10.0.0.1", ifindex=2**31): "ifindex must be",
            _command("pm.add_subflow", token=1, laddr="10.0.0.1", raddr="10.0.0.2"):
                "missing argument rport",
            _command("pm.remove_subflow", token=1, laddr="10.0.0.1", lport=1, raddr="::1",
                     rport=2, backup=1): "unknown argument backup",
            _command("kpm.flush_addrs\u0000"): "unknown op",
        }
        for data, words in refused.items():
            gw.send(data)
            reply = gw.line()
            assert reply is not None and reply["op"] == "mptcpd.result", (data, reply)
            assert not reply["args"]["ok"] and words in reply["args"]["error"], reply
        gw.send(_command("bridge.ping"))
        reply = gw.line()
        assert reply is not None and reply["args"]["ok"] is True
        assert daemon.proc.poll() is None, daemon.log()
    finally:
        daemon.stop()
        gw.close()
