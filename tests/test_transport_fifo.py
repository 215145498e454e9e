"""The fifo transport over real FIFOs, real processes and a real C writer.

Servers run in child processes where the test is about another process (echo,
kill -9, a live owner); in this process where the test must watch the server
side of a connection (EOF, send timeouts, close).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import accept_in_thread

from ipcgw.errors import ConnectError, Disconnected, Timeout, TransportError
from ipcgw.transports import connect_bytes, listen
from ipcgw.transports.base import Connection, Listener, ListenerClosed, ServerLock
from ipcgw.transports.fifo import LEGACY_NAME, REQUEST, FifoTransport
from ipcgw.url import parse_url

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

ECHO_SERVER = r"""
import signal, sys, threading
from ipcgw.transports import listen

lst = listen(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=lst.close).start())

def echo(conn):
    try:
        while data := conn.recv():
            conn.send(data)
    except Exception:
        pass
    finally:
        conn.close()

print("READY", flush=True)
while True:
    try:
        conn = lst.accept()
    except Exception:
        break
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""

HALF_FRAME_CLIENT = r"""
import sys, time
from ipcgw.transports import connect_bytes

conn = connect_bytes(sys.argv[1], 5)
conn.send(b"\x00\x10\x00\x00" + b"h" * 5000)  # a 1 MiB frame's header, then a bit of it
print("SENT", flush=True)
time.sleep(60)
"""

SSPI_WRITER = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

struct sspi { int32_t type; int32_t value; };

int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY);   /* blocking open, as mptcpd peers do */
    if (fd < 0) return 2;
    int n = atoi(argv[2]), base = atoi(argv[3]);
    for (int i = 0; i < n; i++) {
        struct sspi rec = { i % 7, base + i };
        if (write(fd, &rec, sizeof rec) != sizeof rec) return 3;
    }
    close(fd);
    return 0;
}
"""


# ---------------------------------------------------------------- plumbing


def open_fds() -> set[str]:
    return set(os.listdir(f"/proc/{os.getpid()}/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Every close() must release every fd, even when other threads were waiting."""
    before = open_fds()
    yield
    deadline = time.monotonic() + 2  # daemon threads may still be leaving
    while (leaked := open_fds() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}


@pytest.fixture
def fifo_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for a server to own, plus the lock file, removed whatever happens."""
    folder = tmp_path / "srv"
    try:
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("fifo", str(folder)).path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("fifo", str(folder / LEGACY_NAME)).path)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def child(*argv: str, ready: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """A child process, waited for its ``ready`` line, killed and reaped at the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == ready, f"child said {line!r}, exit {proc.poll()}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def echo_server(url: str, *prefix: str) -> contextlib.AbstractContextManager[
        subprocess.Popen[str]]:
    return child(*prefix, sys.executable, "-c", ECHO_SERVER, url, ready="READY")


@contextlib.contextmanager
def in_process(url: str) -> Iterator[Listener]:
    lst = listen(url)
    try:
        yield lst
    finally:
        lst.close()


@contextlib.contextmanager
def closing(*conns: Connection) -> Iterator[None]:
    try:
        yield
    finally:
        for conn in conns:
            conn.close()


def exchange(conn: Connection, chunks: list[bytes], timeout: float = 30) -> bytes:
    """Send in one thread while reading here, so big chunks cannot deadlock an echo."""
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for chunk in chunks:
                conn.send(chunk)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    want, got = sum(map(len, chunks)), bytearray()
    try:
        while len(got) < want:
            data = conn.recv(timeout)
            assert data, "unexpected EOF"
            got += data
    finally:
        thread.join(timeout)
    assert not errors, errors
    return bytes(got)


def pair(lst: Listener, url: str) -> tuple[Connection, Connection]:
    """(client, server) ends of one session with an in-process listener."""
    got: list[Connection | BaseException] = []
    thread = accept_in_thread(lst, got)
    client = connect_bytes(url, 5)
    thread.join(5)
    server = got[0]
    assert isinstance(server, Connection), server
    return client, server


def fifos(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if stat.S_ISFIFO(p.lstat().st_mode))


# ---------------------------------------------------------------- capabilities


def test_capabilities() -> None:
    assert FifoTransport.scheme == "fifo"
    assert FifoTransport.crosses_netns is True
    assert FifoTransport.message_boundaries is False
    assert FifoTransport.max_message_size is None


# ---------------------------------------------------------------- echo, many clients


def test_echo_random_chunks_byte_exact(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    rng = random.Random(1)
    chunks = [rng.randbytes(rng.choice([0, 1, 7, 100, 4096, 65537, 300_000, 1 << 20]))
              for _ in range(120)]
    chunks.append(rng.randbytes(16 << 20))  # the largest frame the gateway allows
    with echo_server(url) as proc:
        conn = connect_bytes(url, 5)
        with closing(conn):
            assert exchange(conn, chunks) == b"".join(chunks)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not fifo_dir.exists(), "server left its directory behind"


def test_four_clients_at_once_no_cross_talk(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    results: dict[int, bool] = {}

    def client(n: int) -> None:
        rng = random.Random(n)
        chunks = [bytes([n]) * rng.randrange(1, 200_000) for _ in range(40)]
        conn = connect_bytes(url, 5)
        with closing(conn):
            results[n] = exchange(conn, chunks) == b"".join(chunks)

    with echo_server(url):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == {0: True, 1: True, 2: True, 3: True}


def test_server_in_netns_client_outside(fifo_dir: Path, netns: str) -> None:
    url = f"fifo://{fifo_dir}"
    with echo_server(url, "ip", "netns", "exec", netns):
        conn = connect_bytes(url, 5)
        with closing(conn):
            chunks = [os.urandom(n) for n in (1, 1000, 500_000)]
            assert exchange(conn, chunks) == b"".join(chunks)


# ---------------------------------------------------------------- no server


def test_connect_without_directory_fails_fast(fifo_dir: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError, match="no ipcgw fifo server"):
        connect_bytes(f"fifo://{fifo_dir}", 2)
    assert time.monotonic() - start < 0.5


def test_connect_to_unread_request_fifo_fails_fast_and_cleans_up(fifo_dir: Path) -> None:
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / REQUEST, 0o600)  # what a kill -9'd server leaves
    start = time.monotonic()
    with pytest.raises(ConnectError, match="nobody reads"):
        connect_bytes(f"fifo://{fifo_dir}", 2)
    assert time.monotonic() - start < 0.5
    assert fifos(fifo_dir) == [REQUEST]


def test_connect_to_server_that_never_answers_times_out(fifo_dir: Path) -> None:
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / REQUEST, 0o600)
    reader = os.open(fifo_dir / REQUEST, os.O_RDONLY | os.O_NONBLOCK)  # reads, never acks
    try:
        start = time.monotonic()
        with pytest.raises(ConnectError, match="did not answer"):
            connect_bytes(f"fifo://{fifo_dir}", 0.5)
        assert 0.4 < time.monotonic() - start < 1.5
        assert fifos(fifo_dir) == [REQUEST]
    finally:
        os.close(reader)


# ---------------------------------------------------------------- bad clients


def test_client_killed_mid_frame_gives_eof_and_spares_others(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with in_process(url) as lst:
        good, good_srv = pair(lst, url)
        got: list[Connection | BaseException] = []
        thread = accept_in_thread(lst, got)
        with child(sys.executable, "-c", HALF_FRAME_CLIENT, url, ready="SENT") as victim:
            thread.join(5)
            bad_srv = got[0]
            assert isinstance(bad_srv, Connection), bad_srv
            with closing(good, good_srv, bad_srv):
                victim.kill()
                received = bytearray()
                while data := bad_srv.recv(5):
                    received += data
                assert len(received) == 5004  # everything written, then EOF
                for n in range(50):
                    good.send(b"%d" % n)
                    assert good_srv.recv(5) == b"%d" % n
                    good_srv.send(b"ok%d" % n)
                    assert good.recv(5) == b"ok%d" % n
        assert fifos(fifo_dir) == [REQUEST]  # both sessions ended: their pairs are gone
    assert fifos(fifo_dir) == []


def test_client_that_never_reads_times_out_alone(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with in_process(url) as lst:
        lazy, lazy_srv = pair(lst, url)
        busy, busy_srv = pair(lst, url)
        with closing(lazy, lazy_srv, busy, busy_srv):
            lazy_srv.send_timeout = busy_srv.send_timeout = 0.3
            start = time.monotonic()
            with pytest.raises(Timeout):
                lazy_srv.send(bytes(8 << 20))
            assert time.monotonic() - start < 2
            payload = os.urandom(3 << 20)
            sender = threading.Thread(target=busy.send, args=(payload,))
            sender.start()
            assert read_exactly(busy_srv, len(payload)) == payload
            sender.join(5)
            busy_srv.send(payload[:100_000])
            assert read_exactly(busy, 100_000) == payload[:100_000]


# ---------------------------------------------------------------- timeouts, close, EOF


def test_recv_timeout(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with in_process(url) as lst:
        client, server = pair(lst, url)
        with closing(client, server):
            for conn in (client, server):
                start = time.monotonic()
                with pytest.raises(Timeout):
                    conn.recv(0.2)
                assert 0.15 < time.monotonic() - start < 1


def test_close_from_another_thread_wakes_recv_and_send(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with in_process(url) as lst:
        client, server = pair(lst, url)
        lazy, lazy_srv = pair(lst, url)
        with closing(client, server, lazy, lazy_srv):
            outcome: list[object] = []

            def blocked_send() -> None:
                try:
                    lazy_srv.send(bytes(8 << 20))  # nobody reads, no send_timeout
                except Disconnected as exc:
                    outcome.append(exc)

            waiters = [threading.Thread(target=lambda: outcome.append(client.recv())),
                       threading.Thread(target=lambda: outcome.append(server.recv())),
                       threading.Thread(target=blocked_send)]
            for t in waiters:
                t.start()
            time.sleep(0.3)
            assert not outcome
            client.close()
            server.close()
            lazy_srv.close()
            for t in waiters:
                t.join(2)
                assert not t.is_alive()
            assert outcome.count(b"") == 2
            assert any(isinstance(o, Disconnected) for o in outcome)


def test_server_close_gives_client_eof_and_epipe(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with in_process(url) as lst:
        client, server = pair(lst, url)
        with closing(client):
            server.send(b"bye")
            server.close()
            assert client.recv(2) == b"bye"
            assert client.recv(2) == b""
            with pytest.raises(Disconnected):
                client.send(b"x")


def test_server_killed_client_sees_eof(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with echo_server(url) as proc:
        conn = connect_bytes(url, 5)
        with closing(conn):
            conn.send(b"ping")
            assert conn.recv(5) == b"ping"
            proc.kill()
            proc.wait(5)
            assert conn.recv(5) == b""
            with pytest.raises(Disconnected):
                conn.send(b"x" * 100)
    assert fifos(fifo_dir) == [REQUEST]  # the client removed its pair


# ---------------------------------------------------------------- listener lifecycle


def test_listener_close_removes_every_fifo_and_wakes_accept(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    lst = listen(url)
    try:
        assert stat.S_IMODE(fifo_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((fifo_dir / REQUEST).stat().st_mode) == 0o600
        conns = [c for _ in range(3) for c in pair(lst, url)]
        with closing(*conns):
            assert len(fifos(fifo_dir)) == 7
            got: list[Connection | BaseException] = []
            waiter = accept_in_thread(lst, got)
            time.sleep(0.2)
            lst.close()
            waiter.join(2)
            assert isinstance(got[0], ListenerClosed)
            assert not fifo_dir.exists()
            conns[0].send(b"still")  # live sessions outlive the listener's files
            assert conns[1].recv(2) == b"still"
    finally:
        lst.close()


def test_fifo_mode_from_url(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}?mode=0640"
    with in_process(url) as lst:
        client, server = pair(lst, url)
        with closing(client, server):
            modes = {stat.S_IMODE(p.stat().st_mode) for p in fifo_dir.iterdir()
                     if stat.S_ISFIFO(p.stat().st_mode)}
            assert modes == {0o640}


def test_restart_after_kill_9_reclaims_stale_directory(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with echo_server(url) as proc:
        survivor = connect_bytes(url, 5)
        proc.kill()
        proc.wait(5)
    with closing(survivor):
        assert REQUEST in fifos(fifo_dir)
        with pytest.raises(ConnectError, match="dead"):
            connect_bytes(url, 2)
        with in_process(url) as lst:
            assert fifos(fifo_dir) == [REQUEST]  # the stale pair was swept
            client, server = pair(lst, url)
            with closing(client, server):
                client.send(b"again")
                assert server.recv(2) == b"again"
        assert not fifo_dir.exists()


def test_second_server_on_live_directory_is_refused(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with echo_server(url) as proc:
        with pytest.raises(ConnectError, match=f"pid {proc.pid}"):
            listen(url)
        conn = connect_bytes(url, 5)  # the refusal did not disturb the live server
        with closing(conn):
            conn.send(b"x")
            assert conn.recv(5) == b"x"


def test_directory_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a dir")
    try:
        with pytest.raises(ConnectError, match="directory"):
            listen(f"fifo://{path}")
        with pytest.raises(ConnectError, match="no ipcgw fifo server"):
            connect_bytes(f"fifo://{path}", 1)
        with pytest.raises(TransportError, match="cannot listen"):
            listen(f"fifo://{tmp_path}/missing/fifo?codec=sspi")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("fifo", str(path)).path)


# ---------------------------------------------------------------- legacy sspi


@pytest.fixture(scope="module")
def sspi_writer(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("cc")
    (folder / "writer.c").write_text(SSPI_WRITER)
    exe = str(folder / "writer")
    subprocess.run(["cc", "-O1", "-o", exe, str(folder / "writer.c")], check=True)
    return exe


def records(n: int, base: int) -> bytes:
    return b"".join(struct.pack("=ii", i % 7, base + i) for i in range(n))


def read_exactly(conn: Connection, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += conn.recv(5)
    return bytes(got)


def test_legacy_c_writers_one_after_another(fifo_dir: Path, sspi_writer: str) -> None:
    fifo_dir.mkdir()
    path = fifo_dir / LEGACY_NAME  # a directory URL means DIR/mptcp-ns3-fifo
    lst = listen(f"fifo://{fifo_dir}?codec=sspi")
    try:
        assert stat.S_ISFIFO(path.stat().st_mode)
        conn = lst.accept()
        with closing(conn):
            for n, base in ((100, 0), (50, 1000)):
                subprocess.run([sspi_writer, str(path), str(n), str(base)], check=True, timeout=10)
                assert read_exactly(conn, 8 * n) == records(n, base)
            with pytest.raises(Timeout):  # a writer closing is not EOF
                conn.recv(0.2)
            with pytest.raises(TransportError, match="one-way"):
                conn.send(b"12345678")
            subprocess.run([sspi_writer, str(path), "1", "5"], check=True, timeout=10)
            got: list[Connection | BaseException] = []
            cpu = time.process_time()
            second = accept_in_thread(lst, got)
            time.sleep(0.3)
            assert not got  # one connection only; the next accept waits for close()
            assert time.process_time() - cpu < 0.1, "accept spins on unread data"
            assert read_exactly(conn, 8) == records(1, 5)
            lst.close()
            second.join(2)
            assert isinstance(got[0], ListenerClosed)
        assert not path.exists()
        assert fifo_dir.exists()  # not ours to remove
    finally:
        lst.close()


def test_legacy_named_fifo_reclaims_stale_and_serves_python_writer(
        fifo_dir: Path, sspi_writer: str) -> None:
    fifo_dir.mkdir()
    path = fifo_dir / "my-fifo"
    os.mkfifo(path, 0o644)  # left by a crashed server
    url = f"fifo://{path}?codec=sspi"
    assert parse_url(url).framing == "fixed:8"
    with in_process(url) as lst:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        conn = lst.accept()
        with closing(conn):
            writer = connect_bytes(url, 1)
            with closing(writer):
                writer.send(records(3, 7))
                with pytest.raises(Timeout):  # nothing ever comes back
                    writer.recv(0.1)
            subprocess.run([sspi_writer, str(path), "2", "9"], check=True, timeout=10)
            assert read_exactly(conn, 40) == records(3, 7) + records(2, 9)
    assert not path.exists()
    with pytest.raises(ConnectError):
        connect_bytes(url, 1)


def test_legacy_partial_record_of_a_dead_writer_is_dropped(fifo_dir: Path, sspi_writer: str) -> None:
    fifo_dir.mkdir()
    path = fifo_dir / LEGACY_NAME
    with in_process(f"fifo://{fifo_dir}?codec=sspi") as lst:
        conn = lst.accept()
        with closing(conn):
            half = ("import os, signal, sys; fd = os.open(sys.argv[1], os.O_WRONLY); "
                    "os.write(fd, b'\\x02\\x00\\x00\\x00'); os.kill(os.getpid(), signal.SIGKILL)")
            for _ in range(2):  # also right after a whole session
                subprocess.run([sys.executable, "-c", half, str(path)], timeout=10)
                with pytest.raises(Timeout):  # half a record is not handed up
                    conn.recv(0.3)
                subprocess.run([sspi_writer, str(path), "3", "40"], check=True, timeout=10)
                assert read_exactly(conn, 24) == records(3, 40)


def test_peer_identity(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with in_process(url) as lst:
        client, server = pair(lst, url)
        with closing(client, server):
            assert (server.peer_uid, server.peer_gid) == (os.geteuid(), os.getegid())
    fifo_dir.mkdir()
    for mode, want in (("0600", (os.geteuid(), os.getegid())), ("0620", (None, os.getegid())),
                       ("0622", (None, None))):
        with in_process(f"fifo://{fifo_dir}/legacy?codec=sspi&mode={mode}") as lst:
            conn = lst.accept()
            with closing(conn):
                assert (conn.peer_uid, conn.peer_gid) == want, mode
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("fifo", str(fifo_dir / "legacy")).path)


def test_old_client_hello_without_framing_is_served(fifo_dir: Path) -> None:
    url = f"fifo://{fifo_dir}"
    with in_process(url) as lst:
        got: list[Connection | BaseException] = []
        thread = accept_in_thread(lst, got)
        base, token = fifo_dir / f"c{os.getpid()}-{'ab' * 8}", "ab" * 8
        os.mkfifo(f"{base}.c2s", 0o600)
        os.mkfifo(f"{base}.s2c", 0o600)
        rfd = os.open(f"{base}.s2c", os.O_RDONLY | os.O_NONBLOCK)
        req = os.open(fifo_dir / REQUEST, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(req, f"IPCGW-FIFO 1 {os.getpid()} {token}\n".encode())
            thread.join(5)
            assert isinstance(got[0], Connection), got
            with closing(got[0]):
                assert os.read(rfd, 1) == b"\x06"
        finally:
            os.close(rfd)
            os.close(req)


@pytest.mark.parametrize(("server", "client"), [("fixed:4096", "length:4"),
                                                ("length:4", "delimited:nul")])
def test_framing_mismatch_is_refused_at_once_naming_the_servers(
        fifo_dir: Path, server: str, client: str) -> None:
    """Before: a fixed:4096 server left a length:4 client waiting 5 s for "did not answer Hello"."""
    with echo_server(f"fifo://{fifo_dir}?framing={server}"):
        start = time.monotonic()
        with pytest.raises(ConnectError, match=f"refused the session: client uses framing {client} / "
                           f"codec msgpack, this server uses {server} / msgpack: use the same framing"):
            connect_bytes(f"fifo://{fifo_dir}?framing={client}", 5)
        assert time.monotonic() - start < 1
        assert fifos(fifo_dir) == [REQUEST]  # the refused pair is gone
        conn = connect_bytes(f"fifo://{fifo_dir}?framing={server}", 5)
        with closing(conn):
            conn.send(b"same")
            assert conn.recv(5) == b"same"
