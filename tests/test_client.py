"""One Client shared by several threads: every reply reaches the thread that asked."""

from __future__ import annotations

import threading

import pytest
from gateway_helpers import ServerProcess, fresh_url

import ipcgw
from ipcgw.messages import Command, Error, Ping, Pong


@pytest.fixture
def server(tmp_path):
    proc = ServerProcess([fresh_url("unix", tmp_path)], tmp_path)
    yield proc
    proc.kill()


def test_threads_share_one_client_and_get_their_own_replies(server):
    errors: list[str] = []
    with ipcgw.connect(server.url, timeout=5) as client:

        def worker(tag: int) -> None:
            for i in range(300):
                payload = f"{tag}:{i}".encode()
                try:
                    if client.ping(payload, timeout=10) != payload:
                        errors.append(f"thread {tag} got another thread's reply")
                except ipcgw.IpcgwError as exc:
                    errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert client._replies == {} and client._awaited == set()  # nothing leaks


def test_unsolicited_messages_go_to_recv_while_requests_wait(server):
    with ipcgw.connect(server.url, timeout=5) as client:
        # A Pong nobody asked for (seq 999) and an Error for a Command sent without
        # request(): both are unsolicited, so recv() gets them, in order.
        client.send(Ping(999, b"stray"))
        client.send(Command(77, "endpoint.show"))
        assert client.ping(b"mine") == b"mine"
        assert client.recv(timeout=5) == Pong(999, b"stray")
        stray = client.recv(timeout=5)
        assert isinstance(stray, Error) and stray.request_id == 77
        with pytest.raises(ipcgw.Timeout):
            client.recv(timeout=0.2)


def test_command_raises_with_the_servers_words(server):
    with ipcgw.connect(server.url, timeout=5) as client, \
            pytest.raises(ipcgw.IpcgwError, match="no path-manager backend"):
        client.command("endpoint.show")


def test_submit_returns_an_id_whose_result_comes_from_recv(tmp_path):
    from gateway_helpers import ServerProcess, fresh_url

    import ipcgw

    server = ServerProcess([fresh_url("unix", tmp_path)], tmp_path)
    try:
        with ipcgw.connect(server.url, timeout=5) as client:
            ids = [client.submit(ipcgw.Command(0, "limits.get", {})) for _ in range(3)]
            assert len(set(ids)) == 3
            assert client.ping(b"between") == b"between"  # its own id space: no collision
            got = [client.recv(timeout=5) for _ in ids]
            assert [m.request_id for m in got] == ids  # base handler: an Error per command
            assert client.queued() is None
    finally:
        server.stop_ok()
