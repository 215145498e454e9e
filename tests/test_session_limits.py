"""What one peer may cost the gateway: a started frame has a deadline, sessions per
listener are capped, late replies never pose as new messages, and a refused
frame's reason reaches the client. Real server processes, every transport."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import TRANSPORTS, ServerProcess, fresh_url

import ipcgw
from ipcgw.errors import ConnectError, Disconnected, Timeout
from ipcgw.framing import make_framer
from ipcgw.messages import Hello, Ping, encode
from ipcgw.transports import connect_bytes
from ipcgw.url import parse_url


@pytest.fixture
def start(tmp_path: Path) -> Iterator[callable]:
    started: list[ServerProcess] = []

    def start(transport: str, *extra: str, query: str = "") -> ServerProcess:
        server = ServerProcess([fresh_url(transport, tmp_path, query)], tmp_path, extra=list(extra))
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][:1] == "T"


def _pause(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while not _stopped(server.proc.pid):
        assert time.monotonic() < deadline, "server did not stop"
        time.sleep(0.005)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_trickled_frame_is_dropped_at_its_deadline_and_others_go_on(start, transport):
    server = start(transport, "--frame-timeout", "1")
    ep = parse_url(server.url)
    framer = make_framer(ep.framing)
    conn = connect_bytes(ep, 5)
    conn.send(framer.encode(encode(Hello(1, ep.framing, ep.codec, "slowloris"))))
    conn.recv(5)  # Welcome
    frame = framer.encode(encode(Ping(1, b"x" * 200)))
    with ipcgw.connect(server.url, timeout=5) as other:
        t0 = time.monotonic()
        closed_after = None
        for byte in frame[:-1]:  # one byte every 0.1 s: 20 s for the frame, never complete
            try:
                conn.send(bytes([byte]))
                conn.recv(0.1)
            except Timeout:
                pass
            except Disconnected:
                closed_after = time.monotonic() - t0
                break
            else:  # the server wrote (its Error) or closed: read what follows until EOF
                closed_after = time.monotonic() - t0
                break
            assert other.ping(b"meanwhile") == b"meanwhile"
        conn.close()
        assert closed_after is not None, "the trickling client was never dropped"
        assert closed_after < 4, closed_after
        assert other.ping(b"after") == b"after"
    deadline = time.monotonic() + 5  # the server logs after it wrote the Error
    while "not the rest within 1.0 s" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    server.stop_ok()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_client_too_many_is_refused_with_the_reason(start, transport):
    server = start(transport, "--max-clients", "3")
    clients = [ipcgw.connect(server.url, timeout=5) for _ in range(3)]
    try:
        with pytest.raises(ConnectError, match=r"server busy: 3 clients.*--max-clients"):
            ipcgw.connect(server.url, timeout=5)
        for c in clients:
            assert c.ping(b"ok") == b"ok"
        clients.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the server notices the close on its own time
            try:
                clients.append(ipcgw.connect(server.url, timeout=5))
                break
            except ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert clients[-1].ping(b"in") == b"in"
    finally:
        for c in clients:
            c.close()
    server.stop_ok()


def test_200_silent_clients_cost_a_bounded_number_of_threads(start):
    server = start("unix", "--max-clients", "50")
    socks = []
    import socket

    path = parse_url(server.url).address
    try:
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            socks.append(s)
        time.sleep(0.5)
        threads = len(os.listdir(f"/proc/{server.proc.pid}/task"))
        assert threads <= 50 + 10, threads
        with ipcgw.connect(server.url, timeout=5):
            pytest.fail("a 51st session was admitted")
    except ConnectError as exc:
        assert "server busy" in str(exc)
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 15  # silent clients are dropped at the Hello deadline too
    while True:
        try:
            with ipcgw.connect(server.url, timeout=5) as c:
                assert c.ping(b"x") == b"x"
            break
        except ConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    server.stop_ok()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_reply_after_its_request_timed_out_is_dropped(start, transport):
    server = start(transport)
    with ipcgw.connect(server.url, timeout=5) as client:
        assert client.ping(b"warm") == b"warm"
        _pause(server)
        try:
            with pytest.raises(Timeout):
                client.ping(b"late", timeout=0.2)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        with pytest.raises(Timeout):  # the late Pong comes now, and must not surface here
            msg = client.recv(timeout=1.0)
            pytest.fail(f"a late reply surfaced as a message: {msg!r}")
        assert client.ping(b"next") == b"next"
    server.stop_ok()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_frame_names_its_cause_at_the_client(start, transport):
    server = start(transport, query="max_frame=100000")
    url = server.url.replace("max_frame=100000", "max_frame=1000000")
    with ipcgw.connect(url, timeout=5) as client:
        result: list[BaseException] = []

        def big() -> None:
            try:
                client.ping(b"z" * 200_000, timeout=10)
            except BaseException as exc:
                result.append(exc)

        t = threading.Thread(target=big)
        t.start()
        t.join(20)
        assert not t.is_alive(), "the client hung after its frame was refused"
    assert result and isinstance(result[0], Disconnected), result
    assert "exceeds max_frame=100000" in str(result[0]), result[0]
    assert server.alive()
    server.stop_ok()


def test_a_16_mib_payload_fits_the_default_max_frame(start):
    server = start("unix")
    payload = os.urandom(16 * 1024 * 1024)
    with ipcgw.connect(server.url, timeout=5) as client:
        assert client.ping(payload, timeout=30) == payload
    server.stop_ok()
