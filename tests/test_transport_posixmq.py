"""The posixmq transport over real queues and real processes.

Runs the message-queue contract of ``test_transport_sysv`` plus what is
POSIX-specific: per-client names vanish at accept, and the per-user
RLIMIT_MSGQUEUE gives a clear "too many clients" error.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator

import posix_ipc
import pytest
from conftest import unique
from test_transport_sysv import MqContract, pair

from ipcgw.errors import ConnectError, Disconnected, Timeout
from ipcgw.transports import connect_bytes, listen
from ipcgw.transports.base import ListenerClosed, ServerLock

MQUEUE = "/dev/mqueue"


@pytest.fixture(scope="module", autouse=True)
def _mqueue_fs() -> None:
    """List queues through the mqueue filesystem, mounting it if we may."""
    if not os.path.ismount(MQUEUE) and os.geteuid() == 0:
        os.makedirs(MQUEUE, exist_ok=True)
        subprocess.run(["mount", "-t", "mqueue", "mqueue", MQUEUE], check=False)


def _names(prefix: str) -> set[str]:
    if os.path.ismount(MQUEUE):
        return {n for n in os.listdir(MQUEUE) if n == prefix or n.startswith(prefix + ".")}
    found = set()  # no mqueue fs: at least the rendezvous name can be probed
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.MessageQueue("/" + prefix).close()
        found.add(prefix)
    return found


class TestPosixMq(MqContract):
    @pytest.fixture(autouse=True)
    def _endpoint(self) -> Iterator[None]:
        """A fresh name per test; every queue under it is unlinked, pass or fail."""
        name = unique("ipcgwt")
        self.url = f"posixmq:///{name}"
        self.queues = lambda: _names(name)
        yield
        for n in _names(name):
            with contextlib.suppress(posix_ipc.Error):
                posix_ipc.unlink_message_queue("/" + n)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("posixmq", f"/{name}").path)

    def test_client_queue_names_vanish_at_accept(self) -> None:
        lst = listen(self.url)
        try:
            client, srv = pair(lst, self.url)
            assert self.queues() == {self.url.split("///")[1]}  # only the rendezvous
            client.send(b"still works")
            assert srv.recv(2) == b"still works"
            client.close()
            srv.close()
        finally:
            lst.close()
        assert not self.queues()

    def test_too_many_clients_names_the_limit(self) -> None:
        lst = listen(self.url)
        conns = []
        try:
            with pytest.raises(ConnectError, match="RLIMIT_MSGQUEUE"):
                for _ in range(200):
                    conns.append(pair(lst, self.url + "?maxmsg=10"))
            assert conns  # several fit before the limit
            client, srv = conns[0]
            client.send(b"first still fine")
            assert srv.recv(2) == b"first still fine"
        finally:
            for client, srv in conns:
                client.close()
                srv.close()
            lst.close()
        assert not self.queues()

    def test_bad_names_rejected(self) -> None:
        for bad in ("posixmq:///a/b", "posixmq:///"):
            with pytest.raises(ValueError):
                connect_bytes(bad, 1)
        with pytest.raises(ValueError, match="maxmsg must be 2"):
            connect_bytes(self.url + "?maxmsg=1", 1)

    def test_data_sent_right_after_accept_cannot_overtake_the_welcome(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A refused client gets its Error right after the welcome (CI saw "bad
        welcome" instead of "server busy"): a client slow to read must still find
        the welcome first, since a queue hands out its highest priority first."""
        from ipcgw.transports import posixmq

        held = posixmq.call_holding_signals

        def slow_receive(fn, *args):  # type: ignore[no-untyped-def]
            if getattr(fn, "__name__", "") == "receive":
                time.sleep(0.3)  # the server sends welcome and data meanwhile
            return held(fn, *args)

        monkeypatch.setattr(posixmq, "call_holding_signals", slow_receive)
        lst = listen(self.url)
        try:
            def accept_and_talk() -> None:
                with contextlib.suppress(ListenerClosed):
                    lst.accept().send(b"first words")

            t = threading.Thread(target=accept_and_talk, daemon=True)
            t.start()
            client = connect_bytes(self.url, 5)
            assert client.recv(2) == b"first words"
            client.close()
            t.join(2)
        finally:
            lst.close()

    def test_a_full_read_queue_does_not_feed_a_blocked_peer(self) -> None:
        """A client that never reads, blocked sending, must not take chunks off its
        full read queue (that let a server blocked on it trickle on past its
        send_timeout); the server's close then empties the queue and resets it."""
        lst = listen(self.url)
        try:
            client, srv = pair(lst, self.url)
            srv.send_timeout = 0.3
            with pytest.raises(Timeout):
                while True:  # fill the client's read queue until the server blocks
                    srv.send(b"s" * 8192)
            client.send_timeout = 1.2
            with pytest.raises(Timeout):
                while True:  # fill the server's; blocked, the client must not read
                    client.send(b"c" * 8192)
            assert client._rq.current_messages == client._rq.max_messages  # type: ignore[attr-defined]
            srv.close(0)
            with pytest.raises(Disconnected, match="reset"):
                client.recv(2)
            client.close()
        finally:
            lst.close()
