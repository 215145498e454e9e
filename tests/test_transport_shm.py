"""The shm transport over real shared memory, semaphores and processes.

The gateway tests run ``python -m ipcgw serve`` in a child; tests that must
watch one side of a connection (EOF, dead peer, close from another thread)
hold that side in this process and put the other in a child. Every test
checks that it leaves no fd and no ``/dev/shm`` name behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest
from conftest import require_shm_c
from gateway_helpers import accept_in_thread

import ipcgw
from ipcgw.errors import ConnectError, Disconnected, Timeout, TransportError
from ipcgw.messages import Pong
from ipcgw.transports import connect_bytes, get_transport, listen
from ipcgw.transports import shm as shm_mod
from ipcgw.transports.base import Connection, Listener, ListenerClosed, ServerLock

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- plumbing


@pytest.fixture(autouse=True, params=["c", "python"])
def rings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both data paths (the C rings and their Python twin), in
    this process and in the children it starts."""
    if request.param == "c":
        require_shm_c()
    monkeypatch.setenv("IPCGW_SHM_RINGS", request.param)
    return str(request.param)


def shm_names(name: str) -> set[str]:
    """Our names in /dev/shm: NAME.sock, NAME.*.seg and sem.NAME.*."""
    return {n for n in os.listdir("/dev/shm") if n.startswith((f"{name}.", f"sem.{name}."))}


def open_fds() -> set[str]:
    return set(os.listdir(f"/proc/{os.getpid()}/fd"))


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh server name; afterwards nothing of it may be left (and nothing is)."""
    fds = open_fds()
    nm = f"ipcgwshm{uuid.uuid4().hex[:8]}"
    try:
        yield nm
        deadline = time.monotonic() + 2  # daemon threads may still be leaving
        while (leaked := open_fds() - fds) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}
        assert shm_names(nm) == set()
    finally:
        for left in shm_names(nm):
            os.unlink(f"/dev/shm/{left}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("shm", nm).path)


@contextlib.contextmanager
def child(*argv: str, ready: str | None = None,
          env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A child process, waited for its ``ready`` line, killed and reaped at the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**(env or os.environ), "PYTHONPATH": str(ROOT)})
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            while line.startswith("listening on ") and ready not in line:
                line = proc.stdout.readline()
            assert ready in line, f"child said {line!r}, exit {proc.poll()}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def gateway(url: str) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return child(sys.executable, "-m", "ipcgw", "serve", "--listen", url, ready="listening on")


@contextlib.contextmanager
def in_process(url: str) -> Iterator[Listener]:
    lst = listen(url)
    try:
        yield lst
    finally:
        lst.close()


@contextlib.contextmanager
def pair(url: str) -> Iterator[tuple[Connection, Connection]]:
    """(client, server) connections both in this process."""
    with in_process(url) as lst:
        got: list[Connection | BaseException] = []
        thread = accept_in_thread(lst, got)
        client = connect_bytes(url, 5)
        thread.join(5)
        server = got[0]
        assert isinstance(server, Connection), server
        try:
            yield client, server
        finally:
            client.close()
            server.close()


def sizes(n: int, limit: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    out = [0, 1, limit, 65535, 65536, 65537, 131072 + 3]
    out += [int(math.exp(rng.uniform(0, math.log(limit + 1)))) - 1 for _ in range(n - len(out))]
    return out


# ---------------------------------------------------------------- through the gateway


def test_echo_random_frames_up_to_4mib_through_64kib_ring(name: str) -> None:
    url = f"shm:///{name}?ring=65536"
    rng = random.Random(3)
    with gateway(url) as server:
        with ipcgw.connect(url, timeout=5, name="big") as client:
            assert shm_names(name) == {f"{name}.sock"}  # per-client names gone at connect
            for size in sizes(60, 4 << 20, seed=5):
                payload = rng.randbytes(size)
                assert client.ping(payload, timeout=30) == payload, size
            # pipelined: many frames in flight, wrapping at every offset
            batch = [rng.randbytes(rng.randrange(0, 40000)) for _ in range(200)]
            for i, payload in enumerate(batch):
                client.send(ipcgw.Ping(10_000 + i, payload))
                if i % 2:  # read as we go: the server blocks when our ring fills
                    for j in (i - 1, i):
                        assert client.recv(timeout=10) == Pong(10_000 + j, batch[j])
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    assert shm_names(name) == set()


def _pinger(url: str, tag: bytes, count: int, errors: list[str]) -> None:
    try:
        rng = random.Random(tag)
        with ipcgw.connect(url, timeout=5, name=tag.decode()) as client:
            for i in range(count):
                payload = tag + i.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 100000))
                if client.ping(payload, timeout=10) != payload:
                    errors.append(f"{tag!r}: reply {i} differs")
                    return
    except Exception as exc:
        errors.append(f"{tag!r}: {exc!r}")


def test_four_concurrent_clients(name: str) -> None:
    url = f"shm:///{name}?ring=65536"
    with gateway(url) as server:
        errors: list[str] = []
        threads = [threading.Thread(target=_pinger, args=(url, f"c{i}".encode(), 200, errors))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0


def test_server_kill9_then_restart_reclaims_everything(name: str) -> None:
    url = f"shm:///{name}"
    with gateway(url) as first, ipcgw.connect(url, timeout=5) as client:
        assert client.ping(b"a") == b"a"
        first.kill()
        first.wait()
        start = time.monotonic()
        with pytest.raises(Disconnected):
            client.ping(b"b", timeout=10)
        assert time.monotonic() - start < 2.0
    assert shm_names(name) == {f"{name}.sock"}  # a dead server's socket file only
    # layout 2 (named segments and semaphores) left some after a crash in mid-handshake
    seg = f"/{name}.c7-0123abcd.seg"
    sems = [f"/{name}.c7-0123abcd.{kind}" for kind in ("c2s.data", "c2s.space", "s2c.data", "s2c.space")]
    posix_ipc.SharedMemory(seg, posix_ipc.O_CREX, size=8192).close_fd()
    for sem in sems:
        posix_ipc.Semaphore(sem, posix_ipc.O_CREX).close()
    assert len(shm_names(name)) == 6
    with pytest.raises(ConnectError, match="dead"):
        ipcgw.connect(url, timeout=2)
    with gateway(url) as second:
        assert shm_names(name) == {f"{name}.sock"}
        with ipcgw.connect(url, timeout=5) as client:
            assert client.ping(b"c") == b"c"
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    assert shm_names(name) == set()


# ---------------------------------------------------------------- dead peers

HALF_FRAME_WRITER = r"""
import os, signal, sys
from ipcgw.transports import connect_bytes, listen
url, role = sys.argv[1], sys.argv[2]
if role == "client":
    conn = connect_bytes(url, 5)
else:
    lst = listen(url)
    print("READY", flush=True)
    conn = lst.accept()
    lst.close()
conn.send((1 << 20).to_bytes(4, "big") + b"h" * 30000)  # a 1 MiB frame's header, then a bit
print("SENT", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _read_until_dead(conn: Connection, want_bytes: int) -> float:
    """Read everything, then the time from the last byte to Disconnected."""
    got = 0
    while got < want_bytes:
        got += len(conn.recv(10))
    start = time.monotonic()
    with pytest.raises(Disconnected, match="died"):
        conn.recv(10)
    return time.monotonic() - start


def test_client_killed_mid_frame_is_a_disconnect_on_the_server(name: str) -> None:
    url = f"shm:///{name}"
    with in_process(url) as lst:
        got: list[Connection | BaseException] = []
        thread = accept_in_thread(lst, got)
        with child(sys.executable, "-c", HALF_FRAME_WRITER, url, "client") as proc:
            thread.join(5)
            conn = got[0]
            assert isinstance(conn, Connection), conn
            try:
                assert _read_until_dead(conn, 30004) < 1.5
                assert proc.wait(5) == -signal.SIGKILL
            finally:
                conn.close()


def test_server_killed_mid_frame_is_a_disconnect_on_the_client(name: str) -> None:
    url = f"shm:///{name}"
    with child(sys.executable, "-c", HALF_FRAME_WRITER, url, "server", ready="READY") as proc:
        conn = connect_bytes(url, 5)
        try:
            assert _read_until_dead(conn, 30004) < 1.5
            assert proc.wait(5) == -signal.SIGKILL
        finally:
            conn.close()


SLEEPING_CLIENT = r"""
import sys, time
from ipcgw.transports import connect_bytes
conn = connect_bytes(sys.argv[1], 5)
print("CONNECTED", flush=True)
time.sleep(60)
"""


def test_writer_on_a_full_ring_sees_the_reader_die(name: str) -> None:
    url = f"shm:///{name}?ring=4096"
    with in_process(url) as lst:
        got: list[Connection | BaseException] = []
        thread = accept_in_thread(lst, got)
        with child(sys.executable, "-c", SLEEPING_CLIENT, url, ready="CONNECTED") as proc:
            thread.join(5)
            conn = got[0]
            assert isinstance(conn, Connection), conn
            try:
                conn.send(b"x" * 4096)  # fills the ring
                threading.Timer(0.3, proc.kill).start()
                start = time.monotonic()
                with pytest.raises(Disconnected, match="died"):
                    conn.send(b"y" * 100000)
                assert time.monotonic() - start < 2.0
            finally:
                conn.close()


# ---------------------------------------------------------------- in-process semantics


def test_orderly_close_is_drained_then_eof(name: str) -> None:
    with pair(f"shm:///{name}?ring=4096") as (client, server):
        writer = threading.Thread(target=lambda: (client.send(b"z" * 10000), client.close()))
        writer.start()
        data = b""
        while chunk := server.recv(5):
            data += chunk
        writer.join(5)
        assert data == b"z" * 10000
        assert server.recv(1) == b""
        with pytest.raises(Disconnected):
            server.send(b"to nobody")


@pytest.mark.parametrize("blocked", ["recv", "send"])
def test_close_from_another_thread_wakes_a_blocked_call(name: str, blocked: str) -> None:
    with pair(f"shm:///{name}?ring=4096") as (client, _server):
        result: list[object] = []

        def run() -> None:
            try:
                result.append(client.recv() if blocked == "recv" else client.send(b"q" * 100000))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.3)
        start = time.monotonic()
        client.close()
        thread.join(2)
        assert not thread.is_alive()
        assert time.monotonic() - start < 0.5
        if blocked == "recv":
            assert result == [b""]
        else:
            assert isinstance(result[0], Disconnected)
        assert client.recv() == b""


class _Stop(Exception):
    """What the test's SIGTERM handler raises."""


@pytest.mark.parametrize("blocked", ["recv", "send"])
def test_signal_handler_exception_reaches_a_sleeping_main_thread(name: str, blocked: str) -> None:
    """posix_ipc turns a signal during a semaphore wait into SignalError and drops the
    handler's exception: a SIGTERM handler's exit (or Ctrl-C) must still come out."""

    def handler(signum: int, frame: object) -> None:
        raise _Stop(signum)

    old = signal.signal(signal.SIGTERM, handler)
    timer = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with pair(f"shm:///{name}?ring=4096") as (client, _server):
            client.send_timeout = 5.0
            timer.start()
            start = time.monotonic()
            with pytest.raises(_Stop):
                client.recv(5.0) if blocked == "recv" else client.send(b"s" * 100000)
            assert time.monotonic() - start < 1.0  # one 0.25 s slice late at most
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old)


def test_recv_and_send_timeouts(name: str) -> None:
    with pair(f"shm:///{name}?ring=4096") as (client, server):
        start = time.monotonic()
        with pytest.raises(Timeout):
            server.recv(0.3)
        assert 0.25 < time.monotonic() - start < 1.0
        server.send_timeout = 0.3
        with pytest.raises(Timeout):
            server.send(b"w" * 10000)  # nobody reads the client side
        assert client.recv(1)  # what fit is intact and readable


def test_listener_close_wakes_accept(name: str) -> None:
    lst = listen(f"shm:///{name}")
    got: list[Connection | BaseException] = []
    thread = accept_in_thread(lst, got)
    time.sleep(0.2)
    lst.close()
    thread.join(2)
    assert isinstance(got[0], ListenerClosed)


# ---------------------------------------------------------------- connect errors and lifecycle


def test_no_server_gives_connect_error_quickly(name: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError, match="no ipcgw shm server"):
        ipcgw.connect(f"shm:///{name}", timeout=1.0)
    assert time.monotonic() - start < 1.0


def test_silent_server_gives_connect_error_within_timeout(name: str) -> None:
    import socket

    path = f"/dev/shm/{name}.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen(1)
        try:
            start = time.monotonic()
            with pytest.raises(ConnectError, match="did not answer"):
                connect_bytes(f"shm:///{name}", timeout=0.5)
            assert time.monotonic() - start < 1.5
        finally:
            os.unlink(path)


def test_second_server_is_refused_and_first_keeps_working(name: str) -> None:
    url = f"shm:///{name}"
    with gateway(url) as first:
        with pytest.raises(ConnectError, match="live ipcgw server"):
            listen(url)
        with ipcgw.connect(url, timeout=5) as client:
            assert client.ping(b"ok") == b"ok"
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0


@pytest.mark.parametrize("url", ["shm:///a/b", "shm:///", "shm:///x?ring=100", "shm:///x?spin_us=no"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises((ConnectError, ValueError)):
        listen(url)


def test_other_architectures_are_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(shm_mod.platform, "machine", lambda: "aarch64")
    with pytest.raises(TransportError, match="x86-64"):
        listen(f"shm:///{name}")
    with pytest.raises(TransportError, match="x86-64"):
        connect_bytes(f"shm:///{name}", 1)


def test_capabilities_and_docs() -> None:
    cls = get_transport("shm")
    assert (cls.scheme, cls.crosses_netns, cls.message_boundaries) == ("shm", True, False)
    assert "Features" in (shm_mod.__doc__ or "") and "URL" in (shm_mod.__doc__ or "")


IDLE_CLIENT = r"""
import sys, time
import ipcgw
client = ipcgw.connect(sys.argv[1], timeout=5)
assert client.ping(b"warm") == b"warm"
print("CONNECTED", flush=True)
try:
    client.recv(timeout=60)  # blocked in recv: the worst case for idling
except ipcgw.IpcgwError:
    pass
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_connection_costs_almost_no_cpu(name: str) -> None:
    url = f"shm:///{name}"
    with gateway(url) as server, \
            child(sys.executable, "-c", IDLE_CLIENT, url, ready="CONNECTED") as client:
        time.sleep(0.5)
        before = _cpu_seconds(server.pid) + _cpu_seconds(client.pid)
        time.sleep(3)
        used = _cpu_seconds(server.pid) + _cpu_seconds(client.pid) - before
        assert used / 3 < 0.02, f"{used / 3:.1%} of a CPU while idle"
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert client.wait(10) == 0  # it saw the server's Bye, or its close


@pytest.mark.parametrize("server_rings", ["c", "python"])
def test_c_and_python_rings_talk_to_each_other(name: str, rings: str, server_rings: str) -> None:
    """A server on one data path and a client on the other: the segment protocol is one."""
    if "c" in (rings, server_rings):
        require_shm_c()
    url = f"shm:///{name}?ring=65536"
    env = {**os.environ, "IPCGW_SHM_RINGS": server_rings}
    with child(sys.executable, "-m", "ipcgw", "serve", "--listen", url, ready="listening on",
               env=env) as server:
        rng = random.Random(11)
        with ipcgw.connect(url, timeout=5) as client:
            for i, size in enumerate(sizes(60, 300_000, seed=5)):  # wraps a 64 KiB ring often
                payload = rng.randbytes(size)
                assert client.request(ipcgw.Ping(i + 1, payload), timeout=10) == Pong(i + 1, payload)
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0


# ---------------------------------------------------------------- peer identity, healing


def test_server_side_connections_name_the_peer_uid_and_gid(name: str) -> None:
    with pair(f"shm:///{name}") as (client, server):
        assert (server.peer_uid, server.peer_gid) == (os.geteuid(), os.getegid())
        assert (client.peer_uid, client.peer_gid) == (os.geteuid(), os.getegid())


def test_a_removed_rendezvous_name_is_recreated_and_old_clients_go_on(name: str, tmp_path: Path) -> None:
    from gateway_helpers import ServerProcess

    path = f"/dev/shm/{name}.sock"
    srv = ServerProcess([f"shm:///{name}"], tmp_path)
    try:
        with ipcgw.connect(srv.url, timeout=5) as old:
            for attempt in ("removed", "replaced"):
                os.unlink(path)
                if attempt == "replaced":
                    Path(path).write_text("not a socket")  # our uid's: the server may remove it
                start = time.monotonic()
                while True:  # a new client gets in within a bounded time
                    try:
                        with ipcgw.connect(srv.url, timeout=1) as new:
                            assert new.ping(b"new") == b"new"
                        break
                    except ConnectError:
                        assert time.monotonic() - start < 5.0, srv.log()
                        time.sleep(0.1)
                assert old.ping(b"old") == b"old"
            log = srv.log()
            assert log.count(f"shm rendezvous {path} was removed; recreated") == 1, log
            assert log.count(f"shm rendezvous {path} was replaced; recreated") == 1, log
        srv.stop_ok()
    finally:
        srv.kill()


def test_healing_never_takes_over_a_name_another_live_server_holds(name: str, tmp_path: Path) -> None:
    """Both the socket and the lock file removed (say a cleaner of /dev/shm and /tmp): a
    second server may take the name; the first must leave it to it."""
    from gateway_helpers import ServerProcess

    first = ServerProcess([f"shm:///{name}"], tmp_path)
    second: ServerProcess | None = None
    try:
        os.unlink(f"/dev/shm/{name}.sock")
        os.unlink(ServerLock("shm", name).path)
        second = ServerProcess([f"shm:///{name}"], tmp_path)
        time.sleep(2.5)  # the first checks at least twice
        assert "not taking it over" in first.log(), first.log()
        assert first.log().count("cannot recreate it") == 1
        with ipcgw.connect(f"shm:///{name}", timeout=5) as client:
            assert client.ping(b"2") == b"2"
        assert "connected" in second.log() and "connected" not in first.log()
        first.stop_ok()
        second.stop_ok()
    finally:
        first.kill()
        if second is not None:
            second.kill()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: shm never spins here")
def test_the_spin_halves_when_data_comes_late_and_comes_back_when_it_comes_soon(name: str) -> None:
    """#16.4(d): a reader whose spin keeps expiring long before the data (a simulation
    reporting 100 times a second) stops burning CPU in it; a peer whose data comes
    soon after the spin gave up gets the full spin again. Waits are chosen far from
    the bounds (0.4 s against a 0.1 s spin; 40 ms against 25 ms), so load cannot
    change the outcome."""
    with pair(f"shm:///{name}?spin_us=100000") as (client, server):
        def later(delay: float) -> bytes:
            threading.Timer(delay, server.send, (b"x",)).start()
            return client.recv(5)

        assert later(0.0) == b"x"
        assert client._spin_ns == 100_000_000  # type: ignore[attr-defined]
        assert later(0.4) == b"x"
        assert client._spin_ns == 50_000_000  # type: ignore[attr-defined]
        assert later(0.4) == b"x"
        assert client._spin_ns == 25_000_000  # type: ignore[attr-defined]
        assert later(0.04) == b"x"  # 15 ms after the 25 ms spin gave up: within 100 ms
        assert client._spin_ns == 100_000_000  # type: ignore[attr-defined]
