"""The sysv transport over real queues and real processes.

``MqContract`` holds the tests both message-queue transports must pass; the
posixmq tests import it and supply their own URL and queue inventory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sysv_ipc

from ipcgw.errors import ConnectError, Disconnected, Timeout
from ipcgw.transports import connect_bytes, get_transport, listen
from ipcgw.transports.base import Connection, Listener, ListenerClosed, ServerLock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

ECHO_SERVER = r"""
import signal, sys, threading, time
from ipcgw.transports import listen

lst = listen(sys.argv[1])
send_timeout = float(sys.argv[2]) if len(sys.argv) > 2 else None
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=lst.close).start())

def echo(conn):
    try:
        while data := conn.recv():
            conn.send(data)
        print("END", conn.peer_pid, flush=True)
    except Exception as e:
        print("DROP", conn.peer_pid, type(e).__name__, time.time(), flush=True)
    finally:
        conn.close()

print("READY", flush=True)
while True:
    try:
        conn = lst.accept()
    except Exception:
        break
    conn.send_timeout = send_timeout
    print("CONN", conn.peer_pid, flush=True)
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""

HALF_SENDER = r"""
import sys, time
from ipcgw.transports import connect_bytes

conn = connect_bytes(sys.argv[1], 5)
conn.send(b"\x00\x10\x00\x00" + b"h" * 20000)  # a 1 MiB frame's header, then a bit of it
print("SENT", flush=True)
time.sleep(60)
"""


class Server:
    """An echo server in a child process, with its log lines on a queue."""

    def __init__(self, url: str, send_timeout: float | None = None) -> None:
        args = [sys.executable, "-c", ECHO_SERVER, url]
        if send_timeout is not None:
            args.append(str(send_timeout))
        self.proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.expect("READY", 10)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str, timeout: float) -> str | None:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=left)
                if line.startswith(prefix):
                    return line
        return None

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)


def echo_roundtrip(conn: Connection, data: bytes, timeout: float = 10.0) -> bytes:
    """Send from a thread (large data would fill the queues) while reading back."""
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            conn.send(data)
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=sender)
    t.start()
    got = bytearray()
    while len(got) < len(data):
        got += conn.recv(timeout)
    t.join()
    assert not errors
    return bytes(got)


def pair(lst: Listener, url: str) -> tuple[Connection, Connection]:
    """(client, server side): accept must run while connect waits for its welcome."""
    accepted: list[Connection] = []

    def accept() -> None:
        with contextlib.suppress(ListenerClosed):
            accepted.append(lst.accept())

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    client = connect_bytes(url, 5)  # on failure the thread ends with the listener
    t.join(5)
    return client, accepted[0]


class MqContract:
    """Tests both queue transports pass; subclasses define the fixtures."""

    url: str
    queues: Callable[[], set[str]]  # the OS queue objects of this test's server

    def test_capabilities(self) -> None:
        cls = get_transport(self.url.split(":")[0])
        assert cls.crosses_netns and cls.message_boundaries
        assert cls.max_message_size == 8192

    def test_echo_random_sizes_server_in_other_process(self) -> None:
        server = Server(self.url)
        try:
            rng = random.Random(7)
            sizes = [0, 1, 8191, 8192, 8193, 16384, 1 << 20]
            sizes += [rng.choice([rng.randrange(64), rng.randrange(1 << 20)]) for _ in range(40)]
            with contextlib.closing(connect_bytes(self.url, 5)) as conn:
                for size in sizes:
                    data = rng.randbytes(size)
                    assert echo_roundtrip(conn, data) == data
        finally:
            server.stop()

    def test_four_clients_at_once(self) -> None:
        server = Server(self.url)
        failures: list[str] = []

        def client(i: int) -> None:
            rng = random.Random(i)
            try:
                with contextlib.closing(connect_bytes(self.url, 5)) as conn:
                    for _ in range(30):
                        data = bytes([i]) * rng.randrange(1, 100_000)
                        if echo_roundtrip(conn, data) != data:
                            failures.append(f"client {i}: cross-talk or corruption")
            except Exception as e:
                failures.append(f"client {i}: {e!r}")

        try:
            threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not failures
        finally:
            server.stop()

    def test_no_server_connect_error_within_timeout(self) -> None:
        start = time.monotonic()
        with pytest.raises(ConnectError, match="no server"):
            connect_bytes(self.url, 1.0)
        assert time.monotonic() - start < 1.0
        assert not self.queues()

    def test_stale_queue_connect_error_then_reclaim(self) -> None:
        server = Server(self.url)
        conn = connect_bytes(self.url, 5)
        assert echo_roundtrip(conn, b"x" * 50_000) == b"x" * 50_000
        server.stop(signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(Disconnected):
            conn.recv(5)
        assert time.monotonic() - start < 2.0  # the client notices the dead server
        conn.close()
        with pytest.raises(ConnectError, match="stale"):
            connect_bytes(self.url, 2)
        server = Server(self.url)  # reclaims what the dead one left
        try:
            with contextlib.closing(connect_bytes(self.url, 5)) as conn:
                assert echo_roundtrip(conn, b"again") == b"again"
        finally:
            server.stop(signal.SIGTERM)
        assert not self.queues()

    def test_second_listener_refused_while_first_lives(self) -> None:
        lst = listen(self.url)
        try:
            with pytest.raises(ConnectError, match="live ipcgw server"):
                listen(self.url)
        finally:
            lst.close()
        assert not self.queues()

    def test_client_killed_mid_frame(self) -> None:
        server = Server(self.url)
        try:
            good = connect_bytes(self.url, 5)
            bad = subprocess.Popen([sys.executable, "-c", HALF_SENDER, self.url], env=ENV,
                                   stdout=subprocess.PIPE, text=True)
            assert bad.stdout is not None and bad.stdout.readline().strip() == "SENT"
            bad.kill()
            killed = time.time()
            bad.wait()
            line = server.expect(f"DROP {bad.pid}", 5)
            assert line is not None, "server never noticed the dead client"
            assert float(line.split()[-1]) - killed < 2.0
            for size in (10, 100_000):
                assert echo_roundtrip(good, b"g" * size) == b"g" * size
            good.close()
        finally:
            server.stop()

    def test_client_that_never_reads_is_dropped_alone(self) -> None:
        server = Server(self.url, send_timeout=1.0)
        try:
            good = connect_bytes(self.url, 5)
            lazy = connect_bytes(self.url, 5)
            lazy_pid_line = server.expect("CONN", 5) and server.expect("CONN", 5)
            assert lazy_pid_line

            def flood() -> None:
                with contextlib.suppress(Disconnected, Timeout):
                    lazy.send(b"z" * (1 << 20))

            threading.Thread(target=flood, daemon=True).start()
            end = time.monotonic() + 3
            while time.monotonic() < end:  # the good client's traffic flows meanwhile
                assert echo_roundtrip(good, b"ok" * 3000, 2.0) == b"ok" * 3000
            assert server.expect("DROP", 3) is not None
            assert echo_roundtrip(good, b"after") == b"after"
            lazy.close()
            good.close()
        finally:
            server.stop()

    def test_sender_dropped_by_a_live_server_is_disconnected(self) -> None:
        """#13.3: a client that never reads is dropped after send_timeout; its own
        blocked send must then fail within a bound, not retry while the server lives."""
        server = Server(self.url, send_timeout=1.0)
        try:
            lazy = connect_bytes(self.url, 5)
            errors: list[tuple[str, float]] = []

            def flood() -> None:
                try:
                    for _ in range(64):
                        lazy.send(b"z" * (1 << 20))
                except (Disconnected, Timeout) as e:
                    errors.append((type(e).__name__, time.time()))

            t = threading.Thread(target=flood, daemon=True)
            t.start()
            line = server.expect("DROP", 10)
            assert line is not None
            t.join(8)
            assert errors and errors[0][0] == "Disconnected", errors
            assert errors[0][1] - float(line.split()[-1]) < 6.0
            assert server.proc.poll() is None
            lazy.close()
        finally:
            server.stop()

    def test_listener_close_removes_every_queue(self) -> None:
        server = Server(self.url)
        conns = [connect_bytes(self.url, 5) for _ in range(3)]
        for c in conns:
            assert echo_roundtrip(c, b"hi" * 10_000) == b"hi" * 10_000
        assert self.queues()
        server.stop(signal.SIGTERM)
        assert server.proc.returncode == 0
        for c in conns:
            with contextlib.suppress(Disconnected):
                assert c.recv(3) == b""
            c.close()
        assert not self.queues()

    def test_recv_timeout_and_close_from_another_thread(self) -> None:
        lst = listen(self.url)
        try:
            client, server_side = pair(lst, self.url)
            start = time.monotonic()
            with pytest.raises(Timeout):
                client.recv(0.2)
            assert 0.2 <= time.monotonic() - start < 0.4
            result: list[bytes] = []
            r = threading.Thread(target=lambda: result.append(server_side.recv()))
            r.start()
            time.sleep(0.1)
            server_side.close()
            r.join(2)
            assert result == [b""]
            assert client.recv(2) == b""  # the server's END
            client.close()
            # accept() blocked in another thread is released by close()
            released: list[type[BaseException]] = []

            def wait_accept() -> None:
                with pytest.raises(ListenerClosed):
                    lst.accept()
                released.append(ListenerClosed)

            t = threading.Thread(target=wait_accept, daemon=True)
            t.start()
            time.sleep(0.1)
        finally:
            lst.close()
        t.join(2)
        assert released == [ListenerClosed]
        assert not self.queues()

    def test_orderly_close_delivers_data_then_eof(self) -> None:
        lst = listen(self.url)
        try:
            client, conn = pair(lst, self.url)
            client.send(b"last words")
            client.close()
            assert conn.recv(2) == b"last words"
            assert conn.recv(2) == b""
            conn.close()
        finally:
            lst.close()
        assert not self.queues()


def _sysv_keys() -> set[str]:
    out = subprocess.run(["ipcs", "-q"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("0x")}


class TestSysv(MqContract):
    @pytest.fixture(autouse=True)
    def _endpoint(self) -> Iterator[None]:
        """A fresh key per test; every queue created meanwhile is removed, pass or fail."""
        key = random.randrange(0x10000000, 0x7FFFFFFF)
        self.url = f"sysv://{key:#x}"
        before = _sysv_keys()
        self.queues = lambda: _sysv_keys() - before
        yield
        for k in _sysv_keys() - before:
            with contextlib.suppress(sysv_ipc.Error):
                sysv_ipc.MessageQueue(int(k, 16) - (1 << 32 if int(k, 16) >= 1 << 31 else 0)
                                      ).remove()
        stem = ServerLock("sysv", f"{key:#x}").path.removesuffix(".lock")
        for path in glob.glob(glob.escape(stem) + ".*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def test_decimal_key_is_the_same_address(self) -> None:
        lst = listen(self.url)
        try:
            decimal = f"sysv://{int(self.url.split('//')[1], 16)}"
            conn, srv = pair(lst, decimal)
            with contextlib.closing(conn):
                conn.send(b"d")
                assert srv.recv(1) == b"d"
                srv.close()
        finally:
            lst.close()

    def test_bad_keys_rejected(self) -> None:
        for bad in ("sysv://0", "sysv://zz", "sysv://0x1ffffffff"):
            with pytest.raises(ValueError):
                connect_bytes(bad, 1)
