"""The lean path-manager commands (ipcgw/mptcp/lean.py) against pyroute2, the reference.

Without root: every request shape is byte for byte what pyroute2 encodes; replies,
extack words, stale and missing answers are read right (a datagram socket stands in
for the kernel). With root, in namespaces of their own: for every op the lean path
and pyroute2 leave the same kernel state and give the same words. Timing is the
bench's (``ipcgw bench --pm``), never a test's.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netns_helpers import FakeSession, exchange, mptcp_pair, testbeds

from ipcgw.messages import Event
from ipcgw.mptcp import genl
from ipcgw.mptcp.genl import KernelError
from ipcgw.mptcp.handler import MptcpHandler
from ipcgw.mptcp.lean import LeanPM
from ipcgw.mptcp.pm import PathManager
from ipcgw.testbed import Testbed

__all__ = ["testbeds"]

FAMILY = 28
HDR = struct.Struct("=IHHII")


# -- a datagram socket that stands in for the kernel -------------------------------


class FakeKernel:
    """``lean`` talks to ``peer``; tests queue answers on ``peer`` and read requests."""

    def __init__(self, timeout: float = 0.2) -> None:
        a, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.lean = LeanPM(timeout=timeout, sock=a, family_id=FAMILY)

    def close(self) -> None:
        self.lean.close()
        self.peer.close()

    def requests(self) -> list[bytes]:
        out = []
        self.peer.setblocking(False)
        try:
            while True:
                out.append(self.peer.recv(1 << 16))
        except BlockingIOError:
            return out
        finally:
            self.peer.setblocking(True)


@pytest.fixture
def fake() -> Iterator[FakeKernel]:
    k = FakeKernel()
    try:
        yield k
    finally:
        k.close()


def ack(seq: int, code: int = 0, words: str | None = None, capped: bool = True,
        request: bytes = b"") -> bytes:
    """An NLMSG_ERROR as the kernel sends it (NETLINK_CAP_ACK: only the request's header)."""
    echoed = request[: HDR.size] if capped else request
    echoed = echoed or HDR.pack(20, FAMILY, 5, seq, 0)
    body = struct.pack("=i", -code) + echoed + bytes(-len(echoed) % 4)
    flags = 0x100 if capped else 0
    if words is not None:
        text = words.encode() + b"\0"
        body += struct.pack("=HH", 4 + len(text), 1) + text + bytes(-len(text) % 4)
        flags |= 0x200
    return HDR.pack(HDR.size + len(body), 2, flags, seq, 0) + body


def limits_reply(seq: int, subflows: int, accepted: int) -> bytes:
    body = struct.pack("=BBH", genl.MPTCP_PM_CMD_GET_LIMITS, 1, 0)
    body += struct.pack("=HHI", 8, 2, accepted) + struct.pack("=HHI", 8, 3, subflows)
    return HDR.pack(HDR.size + len(body), FAMILY, 0, seq, 0) + body


# -- encoding: byte for byte pyroute2's -----------------------------------------------


class RecordingGenl:
    """What PathManager(lean=False) hands pyroute2, encoded as GenlSocket would."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def request(self, cmd: int, attrs: list[Any] | None = None, dump: bool = False) -> list[Any]:
        msg = genl.mptcp_pm_msg()
        msg["cmd"] = cmd
        msg["version"] = genl.MPTCP_PM_VER
        msg["attrs"] = attrs or []
        msg["header"].update(type=FAMILY, flags=5, sequence_number=1, pid=0)
        msg.encode()
        self.sent.append(bytes(msg.data))
        return []

    def close(self) -> None:
        pass


def pyroute2_bytes(call: Callable[[PathManager], Any]) -> bytes:
    pm = PathManager.__new__(PathManager)
    pm.netns, pm._lean, pm._nl = None, None, RecordingGenl()
    call(pm)
    (data,) = pm._nl.sent
    return data


def lean_bytes(call: Callable[[PathManager], Any]) -> bytes:
    k = FakeKernel()
    try:
        pm = PathManager.__new__(PathManager)
        pm.netns, pm._lean, pm._nl = None, k.lean, None
        k.peer.send(ack(1))
        call(pm)
        (data,) = k.requests()
        return data
    finally:
        k.close()


def set_limits_only(pm: PathManager, subflows: int | None, accepted: int | None) -> None:
    """PathManager.set_limits without its read-back (which would need a kernel reply)."""
    if pm._lean is not None:
        pm._lean.set_limits(subflows, accepted)
        return
    attrs = [("MPTCP_PM_ATTR_SUBFLOWS", subflows)] if subflows is not None else []
    if accepted is not None:
        attrs.append(("MPTCP_PM_ATTR_RCV_ADD_ADDRS", accepted))
    pm._do("limits.set", genl.MPTCP_PM_CMD_SET_LIMITS, attrs)


SHAPES: list[tuple[str, Callable[[PathManager], Any]]] = [
    ("set_endpoint_flags backup", lambda p: p.set_endpoint_flags(2, backup=True)),
    ("set_endpoint_flags clear", lambda p: p.set_endpoint_flags(255, backup=False)),
    ("set_endpoint_flags fullmesh", lambda p: p.set_endpoint_flags(3, False, fullmesh=True)),
    ("set_limits both", lambda p: set_limits_only(p, 4, 3)),
    ("set_limits subflows", lambda p: set_limits_only(p, 2, None)),
    ("set_limits accepted", lambda p: set_limits_only(p, None, 1)),
    ("announce v4", lambda p: p.announce(0xE3237B7A, "10.0.2.2", 5)),
    ("announce v6 port dev", lambda p: p.announce(7, "fd00::2", 6, port=8080, ifindex=3)),
    ("remove", lambda p: p.remove(0xFFFFFFFF, 9)),
    ("subflow_create", lambda p: p.subflow_create(5, "10.0.2.1", "10.0.2.2", 5201)),
    ("subflow_create all", lambda p: p.subflow_create(5, "fd00::1", "fd00::2", 443, local_id=6,
                                                      local_port=4000, backup=True, ifindex=2)),
    ("subflow_destroy", lambda p: p.subflow_destroy(5, "10.0.2.1", 40000, "10.0.2.2", 5201)),
    ("set_flags backup", lambda p: p.set_flags(5, "10.0.2.1", 40000, "10.0.2.2", 5201, True)),
    ("set_flags clear v6", lambda p: p.set_flags(5, "fd00::1", 1, "fd00::2", 65535, False)),
]


@pytest.mark.parametrize("name,call", SHAPES, ids=[n for n, _ in SHAPES])
def test_every_request_shape_is_pyroute2s_bytes(name: str, call: Callable[[PathManager], Any]
                                                ) -> None:
    assert lean_bytes(call).hex() == pyroute2_bytes(call).hex()


def test_gets_ask_for_no_ack_and_are_otherwise_pyroute2s_bytes(fake: FakeKernel) -> None:
    fake.peer.send(limits_reply(1, 2, 0))
    assert fake.lean.limits() == {"subflows": 2, "add_addr_accepted": 0}
    (sent,) = fake.requests()
    ref = pyroute2_bytes(lambda p: p._do("limits.get", genl.MPTCP_PM_CMD_GET_LIMITS))
    assert HDR.unpack_from(sent)[2] == 1 and HDR.unpack_from(ref)[2] == 5  # REQUEST vs +ACK
    assert sent[:6] + sent[8:] == ref[:6] + ref[8:]


def test_argument_errors_match_pyroute2s_words_and_order() -> None:
    bad: list[Callable[[PathManager], Any]] = [
        lambda p: p.set_endpoint_flags(300, True),
        lambda p: p.endpoint(-1),
        lambda p: p.set_limits(subflows=-1),
        lambda p: p.announce(-1, "not-an-address", 1),  # the address is checked first
        lambda p: p.announce(1, "10.0.0.1", 1, port=70000),
        lambda p: p.announce(1, "10.0.0.1", 1, ifindex=-2),
        lambda p: p.remove(2**32, 300),
        lambda p: p.subflow_create(-1, "10.0.0.1", "nope", 1),  # local, token, remote
        lambda p: p.subflow_create(1, "10.0.0.1", "nope", 1),
        lambda p: p.subflow_destroy(-1, "x", 1, "y", 1),  # token first
        lambda p: p.set_flags(1, "10.0.0.1", 1, "10.0.0.2", -5, True),
    ]
    for call in bad:
        words = []
        for make in (pyroute2_bytes, lean_bytes):
            with pytest.raises(ValueError) as err:
                make(call)
            words.append(str(err.value))
        assert words[0] == words[1]


# -- replies -------------------------------------------------------------------------


def test_the_kernels_words_capped_or_not(fake: FakeKernel) -> None:
    fake.peer.send(ack(1, errno.EINVAL, "invalid token"))
    with pytest.raises(KernelError) as err:
        fake.lean.remove(1, 1)
    assert (err.value.code, err.value.message, err.value.op) == (errno.EINVAL, "invalid token",
                                                                 "pm.remove")
    request = fake.requests()[0]
    fake.peer.send(ack(2, errno.ENOENT, "address with id 9 not found", capped=False,
                       request=request))
    with pytest.raises(KernelError, match=r"^address with id 9 not found$"):
        fake.lean.remove(1, 9)
    fake.peer.send(ack(3, errno.ESRCH))  # no extack: strerror, as the pyroute2 path says
    with pytest.raises(KernelError) as err:
        fake.lean.subflow_destroy(1, "10.0.0.1", 1, "10.0.0.2", 2)
    assert err.value.message == "No such process"


def test_a_stale_answer_is_never_taken_for_anothers(fake: FakeKernel) -> None:
    # a call whose answer does not come gives up ...
    with pytest.raises(KernelError) as err:
        fake.lean.limits()
    assert err.value.code == errno.ETIMEDOUT and "no answer from the kernel" in err.value.message
    # ... and its late answer (seq 1) sits before the next call's (seq 2)
    fake.peer.send(limits_reply(1, 7, 7) + ack(1, errno.EINVAL, "stale"))
    fake.peer.send(limits_reply(2, 2, 1))
    assert fake.lean.limits() == {"subflows": 2, "add_addr_accepted": 1}
    fake.peer.send(ack(2, errno.EINVAL, "stale"))  # a duplicate for an answered call
    fake.peer.send(ack(3))
    fake.lean.set_endpoint_flags(1, 0)


def test_one_lock_from_send_to_answer(fake: FakeKernel) -> None:
    """Two threads; the fake kernel answers each request with its own seq as the
    value: every answer is taken exactly once, by the call that asked."""
    def kernel() -> None:
        for _ in range(400):
            req = fake.peer.recv(1 << 16)
            seq = HDR.unpack_from(req)[3]
            fake.peer.send(limits_reply(seq, seq, 0))

    server = threading.Thread(target=kernel, daemon=True)
    server.start()
    got: list[int] = []

    def client() -> None:
        for _ in range(200):
            got.append(fake.lean.limits()["subflows"])
    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    server.join(timeout=20)
    assert sorted(got) == list(range(1, 401))


# -- the real kernel: same state, same words ----------------------------------------


@pytest.fixture
def both(netns: str) -> Iterator[tuple[PathManager, PathManager]]:
    with PathManager(netns) as lean, PathManager(netns, lean=False) as ref:
        assert lean.lean and not ref.lean
        yield lean, ref


def words(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(KernelError) as err:
        call()
    return err.value.code, err.value.message, err.value.op


def test_limits_same_state_same_words(both: tuple[PathManager, PathManager]) -> None:
    lean, ref = both
    assert lean.limits() == ref.limits()
    assert lean.set_limits(subflows=4, add_addr_accepted=3) == ref.limits() == {
        "subflows": 4, "add_addr_accepted": 3}
    ref.set_limits(subflows=2)
    assert lean.limits() == {"subflows": 2, "add_addr_accepted": 3}
    lean.set_limits(add_addr_accepted=1)  # the other limit stays
    assert ref.limits() == {"subflows": 2, "add_addr_accepted": 1}
    assert lean.set_limits() == ref.set_limits()
    too_many = [words(functools.partial(p.set_limits, subflows=1000)) for p in both]
    assert too_many[0] == too_many[1] and too_many[0][1]
    assert ref.limits() == {"subflows": 2, "add_addr_accepted": 1}


def test_endpoints_same_state_same_words(both: tuple[PathManager, PathManager],
                                         netns: str) -> None:
    import subprocess

    lean, ref = both
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.0.3.1/32", "dev", "lo"], check=True)
    ref.add_endpoint("10.0.1.1", id=1, flags="subflow", ifindex=1)
    ref.add_endpoint("fd00::1", id=2, flags="signal")
    ref.add_endpoint("10.0.3.1", id=3, flags="signal", port=1234)
    ref.add_endpoint("10.0.4.1", id=255, flags="subflow,backup")
    for i in (1, 2, 3, 255):
        assert lean.endpoint(i) == ref.endpoint(i)
    assert lean.endpoint(3)["port"] == 1234
    lean.set_endpoint_flags(1, backup=True)
    assert ref.endpoint(1)["flag_names"] == ["subflow", "backup"]
    lean.set_endpoint_flags(1, backup=True, fullmesh=True)
    assert ref.endpoint(1)["flag_names"] == ["subflow", "backup", "fullmesh"]
    ref.set_endpoint_flags(1, backup=False)
    assert lean.endpoint(1)["flag_names"] == ["subflow"]
    lean.set_endpoint_flags(255, backup=False)
    assert ref.endpoint(255)["flag_names"] == ["subflow"]
    for call in (lambda p: p.endpoint(9), lambda p: p.set_endpoint_flags(9, True),
                 lambda p: p.set_endpoint_flags(2, False, fullmesh=True),  # signal + fullmesh
                 lambda p: p.remove(1234, 1), lambda p: p.announce(1234, "10.0.1.1", 1),
                 lambda p: p.subflow_create(1234, "10.0.1.1", "10.0.1.2", 80),
                 lambda p: p.subflow_destroy(1234, "10.0.1.1", 1, "10.0.1.2", 80),
                 lambda p: p.set_flags(1234, "10.0.1.1", 1, "10.0.1.2", 80, True)):
        got = [words(functools.partial(call, p)) for p in both]
        assert got[0] == got[1], got
    assert [e["id"] for e in ref.endpoints()] == [1, 2, 3, 255]


def test_threads_get_their_own_answers(both: tuple[PathManager, PathManager]) -> None:
    lean, ref = both
    for i in range(1, 5):
        ref.add_endpoint(f"10.0.{i}.1", id=i)
    wrong: list[tuple[int, Any]] = []

    def worker(i: int) -> None:
        for _ in range(300):
            got = lean.endpoint(i)["id"]
            if got != i:
                wrong.append((i, got))
            lean.limits()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not wrong


def test_handler_answers_alike_on_both_paths(netns: str) -> None:
    from ipcgw.messages import Command

    handlers = [MptcpHandler(netns=netns, listen_events=False, lean=flag) for flag in (True, False)]
    s = FakeSession()
    try:
        assert handlers[0].pm.lean and not handlers[1].pm.lean
        handlers[1].pm.add_endpoint("10.0.2.1", id=2, flags="subflow")
        for op, args in (("limits.set", {"subflows": 3}), ("limits.get", {}),
                         ("endpoint.set_flags", {"id": 2, "backup": True}),
                         ("endpoint.show", {"id": 2}),
                         ("endpoint.set_flags", {"id": 2, "backup": False}),
                         ("endpoint.show", {"id": 2}), ("endpoint.show", {"id": 9}),
                         ("endpoint.set_flags", {"id": 9, "backup": True}),
                         ("endpoint.set_flags", {"id": 300, "backup": True}),
                         ("pm.remove", {"token": 1, "id": 2}),
                         ("pm.set_flags", {"token": "0x1", "local_addr": "10.0.2.1",
                                           "local_port": 1, "remote_addr": "10.0.2.2",
                                           "remote_port": 2, "backup": True})):
            got = [h.on_message(s, Command(7, op, dict(args))) for h in handlers]
            assert got[0] == got[1], (op, got)
    finally:
        for h in handlers:
            h.close()


class Side:
    """A namespace's handler (its listener satisfies the userspace PM) and both paths."""

    def __init__(self, netns: str) -> None:
        self.handler = MptcpHandler(netns=netns)
        self.session = FakeSession()
        self.handler.on_connect(self.session)
        from ipcgw.messages import Command

        assert self.handler.on_message(self.session, Command(1, "subscribe", {})).ok
        self.lean = PathManager(netns)
        self.ref = PathManager(netns, lean=False)

    def event(self, kind: str, n: int = 1, **attrs: Any) -> Event:
        def matching() -> list[Event]:
            return [m for m in self.session.events(kind)
                    if all(m.attrs.get(k) == v for k, v in attrs.items())]
        self.session.wait_posted(lambda m: len(matching()) >= n)
        return matching()[n - 1]

    def close(self) -> None:
        self.lean.close()
        self.ref.close()
        self.handler.close()


def same_words(side: Side, call: Callable[[PathManager], Any]) -> str:
    got = [words(functools.partial(call, p)) for p in (side.lean, side.ref)]
    assert got[0] == got[1], got
    return got[0][1]


def test_userspace_pm_same_effects_same_words(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds(client_pm="userspace", server_pm="userspace")
    client, server = Side(tb.client), Side(tb.server)
    port = 5311
    try:
        with mptcp_pair(tb, port=port) as (cli, conn):
            exchange(cli, conn)
            ct = client.event("ESTABLISHED").attrs["token"]
            st = server.event("ESTABLISHED").attrs["token"]

            # announce on one path, remove on the other, both ways round
            server.lean.announce(st, "10.0.2.2", 5)
            assert client.event("ANNOUNCED", token=ct, rem_id=5).attrs["daddr"] == "10.0.2.2"
            server.ref.remove(st, 5)
            client.event("REMOVED", token=ct, rem_id=5)
            server.ref.announce(st, "10.0.2.2", 7)
            client.event("ANNOUNCED", token=ct, rem_id=7)
            server.lean.remove(st, 7)
            client.event("REMOVED", token=ct, rem_id=7)

            # a subflow made by the lean path, flipped by both, destroyed by pyroute2
            client.lean.subflow_create(ct, "10.0.2.1", "10.0.2.2", port, local_id=6)
            sub = client.event("SUB_ESTABLISHED", token=ct, saddr="10.0.2.1")
            four = ("10.0.2.1", sub.attrs["sport"], "10.0.2.2", port)
            client.ref.set_flags(ct, *four, True)
            assert server.event("SUB_PRIORITY", 1, token=st).attrs["backup"] == 1
            client.lean.set_flags(ct, *four, False)
            assert server.event("SUB_PRIORITY", 2, token=st).attrs["backup"] == 0
            client.ref.subflow_destroy(ct, *four)
            client.event("SUB_CLOSED", token=ct, saddr="10.0.2.1")
            # and the other way round
            client.ref.subflow_create(ct, "10.0.2.1", "10.0.2.2", port, local_id=6)
            sub = client.event("SUB_ESTABLISHED", 2, token=ct, saddr="10.0.2.1")
            four = ("10.0.2.1", sub.attrs["sport"], "10.0.2.2", port)
            client.lean.subflow_destroy(ct, *four)
            client.event("SUB_CLOSED", 2, token=ct, saddr="10.0.2.1")

            # refusals: the same words on both paths, nothing changes
            assert same_words(server, lambda p: p.announce(st ^ 1, "10.0.2.2", 5)) == \
                "invalid token"
            assert same_words(server, lambda p: p.remove(st ^ 1, 5)) == "invalid token"
            assert "not found" in same_words(server, lambda p: p.remove(st, 99))
            assert same_words(client, lambda p: p.subflow_destroy(ct, *four)) == \
                "subflow not found"
            assert same_words(client, lambda p: p.set_flags(ct ^ 1, *four, True)) == \
                "invalid token"
            same_words(client, lambda p: p.set_flags(ct, *four, True))  # gone subflow
            same_words(client, lambda p: p.subflow_create(ct ^ 1, "10.0.2.1", "10.0.2.2", port))
            same_words(client, lambda p: p.announce(ct, "10.0.9.9", 0))
            assert len(client.session.events("SUB_CLOSED")) == 2
            exchange(cli, conn)
    finally:
        client.close()
        server.close()


def test_kernel_pm_refuses_userspace_commands_alike(testbeds: Callable[..., Testbed]) -> None:
    tb = testbeds()  # both kernel PM
    client = Side(tb.client)
    try:
        with mptcp_pair(tb, port=5312) as (cli, conn):
            exchange(cli, conn)
            ct = client.event("ESTABLISHED").attrs["token"]
            got = same_words(client, lambda p: p.announce(ct, "10.0.2.1", 5))
            assert got == "userspace PM not selected"
            for call in (lambda p: p.remove(ct, 5),
                         lambda p: p.subflow_create(ct, "10.0.2.1", "10.0.2.2", 5312),
                         lambda p: p.subflow_destroy(ct, "10.0.1.1", 1, "10.0.1.2", 5312),
                         lambda p: p.set_flags(ct, "10.0.1.1", 1, "10.0.1.2", 5312, True)):
                same_words(client, call)
    finally:
        client.close()


def test_bench_pm_refuses_transports_it_does_not_measure() -> None:
    from click.testing import CliRunner
    from ipcgw_bench.cli import bench_command

    result = CliRunner().invoke(bench_command, ["--pm", "--transport", "tcp"])
    assert result.exit_code == 2 and "--pm measures unix and shm, not tcp" in result.output
