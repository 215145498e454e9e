"""Fixtures and helpers for the MPTCP tests: testbeds, transfers, a fake session.

Import the fixtures into a test module (``from netns_helpers import testbeds``).
Every testbed has a unique prefix and is removed in a ``finally``, whatever
the test did; sockets are created inside the namespaces by a helper thread
(``run_in_netns``), so no test process changes namespace.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import require_netns, unique

from ipcgw.messages import Command, Event, Message, Result
from ipcgw.netns import run_in_netns
from ipcgw.testbed import Testbed

IPPROTO_MPTCP = 262


def require_nft() -> None:
    """Loss needs the nft binary; same skip-or-fail rule as require_netns."""
    require_netns()
    if shutil.which("nft") is None:
        import os

        if os.environ.get("IPCGW_REQUIRE_NETNS") == "1":
            pytest.fail("IPCGW_REQUIRE_NETNS=1 but nft is not installed (apt-get install nftables)")
        pytest.skip("needs nft (nftables)")


@pytest.fixture
def testbeds() -> Iterator[Callable[..., Testbed]]:
    """``testbeds(scenario=1, **kw)`` -> a Testbed that is up; all removed at the end."""
    require_netns()
    made: list[Testbed] = []

    def make(scenario: int | None = None, **kw: Any) -> Testbed:
        kw.setdefault("prefix", unique("ipt"))
        tb = Testbed.scenario(scenario, **kw) if scenario else Testbed(**kw)
        made.append(tb)
        return tb.up()

    try:
        yield make
    finally:
        for tb in made:
            tb.down()


def mptcp_socket(netns: str | None) -> socket.socket:
    return run_in_netns(
        netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    )


@contextlib.contextmanager
def mptcp_pair(tb: Testbed, port: int = 5201, path: int = 1, sndbuf: int | None = None
               ) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client socket, server's accepted socket) of one MPTCP connection over path ``path``."""
    srv = mptcp_socket(tb.server)
    cli = mptcp_socket(tb.client)
    conn: socket.socket | None = None
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen()
        if sndbuf:
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        cli.settimeout(10)
        cli.connect((tb.server_addr(path), port))
        srv.settimeout(10)
        conn, _ = srv.accept()
        cli.settimeout(None)
        yield cli, conn
    finally:
        for s in (cli, conn, srv):
            if s is not None:
                s.close()


def exchange(cli: socket.socket, conn: socket.socket, size: int = 4096) -> None:
    """Data both ways, so both ends reach ESTABLISHED (the client only after data)."""
    cli.sendall(b"c" * size)
    got = 0
    while got < size:
        got += len(conn.recv(size))
    conn.sendall(b"s" * size)
    got = 0
    while got < size:
        got += len(cli.recv(size))


@contextlib.contextmanager
def pump(cli: socket.socket, conn: socket.socket, chunk: int = 65536) -> Iterator[None]:
    """Send client -> server as fast as possible while the block runs."""
    stop = threading.Event()

    def tx() -> None:
        data = b"x" * chunk
        with contextlib.suppress(OSError):
            while not stop.is_set():
                cli.sendall(data)

    def rx() -> None:
        with contextlib.suppress(OSError):
            while conn.recv(1 << 16):
                pass

    threads = [threading.Thread(target=f, daemon=True) for f in (tx, rx)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            cli.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=5)


class FakeSession:
    """Stands in for the gateway's Session in handler unit tests."""

    def __init__(self, sid: int = 1) -> None:
        self.id = sid
        self.name = f"fake{sid}"
        self.sent: list[Message] = []
        self.posted: list[Message] = []
        self._cond = threading.Condition()
        self._closed = False

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def post(self, msg: Message) -> None:
        with self._cond:
            self.posted.append(msg)
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_posted(self, pred: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(pred(m) for m in self.posted), timeout)
            if not ok:
                raise AssertionError(f"nothing matching posted within {timeout} s: "
                                     f"{[type(m).__name__ for m in self.posted]}")
            return next(m for m in self.posted if pred(m))

    def events(self, kind: str) -> list[Event]:
        with self._cond:
            return [m for m in self.posted if isinstance(m, Event) and m.kind == kind]


class Side:
    """One namespace's MptcpHandler driven by Commands, its events kept by a FakeSession."""

    def __init__(self, netns: str) -> None:
        from ipcgw.mptcp.handler import MptcpHandler

        self.handler = MptcpHandler(netns=netns)
        self.session = FakeSession()
        self.ids = 0
        assert self.cmd("subscribe", events=True).ok

    def cmd(self, op: str, **args: Any) -> Result:
        self.ids += 1
        result = self.handler.on_message(self.session, Command(self.ids, op, args))  # type: ignore[arg-type]
        assert isinstance(result, Result)
        return result

    def event(self, kind: str, **attrs: Any) -> Event:
        def match(m: object) -> bool:
            return isinstance(m, Event) and m.kind == kind and all(
                m.attrs.get(k) == v for k, v in attrs.items())
        return self.session.wait_posted(match)  # type: ignore[return-value]

    def count(self, kind: str) -> int:
        return len(self.session.events(kind))

    def close(self) -> None:
        self.handler.close()


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")
