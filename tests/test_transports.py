"""The gateway contract, run over every transport x framing with real processes.

Each test starts ``python -m ipcgw serve`` in its own process and talks to it
through ``ipcgw.connect`` (or raw bytes where the test must misbehave).
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require_netns
from gateway_helpers import NETNS_CROSSING, TRANSPORTS, ServerProcess, fresh_url, ipc_objects

import ipcgw
from ipcgw.errors import ConnectError
from ipcgw.framing import make_framer
from ipcgw.messages import Error, Hello, Ping, Pong, decode, encode
from ipcgw.transports import connect_bytes
from ipcgw.url import Endpoint, parse_url

FRAMINGS = ["length:4", "delimited:nul", "delimited:lf", "fixed:4096"]
MAX_SIZE = 1 << 20


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[callable]:
    started: list[ServerProcess] = []

    def start(transport: str, query: str = "", **kw: object) -> ServerProcess:
        server = ServerProcess([fresh_url(transport, tmp_path, query)], tmp_path, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def sizes(n: int, limit: int, seed: int) -> list[int]:
    """Log-uniform sizes 0..limit, with both ends present."""
    rng = random.Random(seed)
    out = [0, limit, 1, limit - 1]
    out += [int(math.exp(rng.uniform(0, math.log(limit + 1)))) - 1 for _ in range(n - 4)]
    return out


def _without_lf(n: int) -> int:
    """The largest number <= n none of whose bytes is 0x0a (so msgpack headers carry no LF)."""
    return int.from_bytes(n.to_bytes(8, "big").replace(b"\n", b"\t"), "big")


def ping_for(framing: str, size: int, seq: int, rng: random.Random) -> Ping:
    """A Ping of about ``size`` payload bytes that the framing can carry."""
    if framing != "delimited:lf":
        return Ping(seq, rng.randbytes(size))
    payload = rng.randbytes(_without_lf(size)).replace(b"\n", b"~")
    msg = Ping(_without_lf(seq), payload)
    assert b"\n" not in encode(msg)
    return msg


def payload_limit(framing: str) -> int:
    if framing.startswith("fixed:"):
        return int(framing[6:]) - 16  # room for msgpack's array/bin headers
    return MAX_SIZE


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_echo_1000_messages_byte_exact_in_order(server_factory, transport, framing):
    server = server_factory(transport, f"framing={framing}")
    rng = random.Random(7)
    seq = 1
    with ipcgw.connect(server.url, timeout=5, name="echo") as client:
        for size in sizes(1000, payload_limit(framing), seed=1):
            msg = ping_for(framing, size, seq, rng)
            client.send(msg)
            reply = client.recv(timeout=10)
            assert reply == Pong(msg.seq, msg.payload)
            seq = msg.seq + 1
    server.stop_ok()


def _pinger(url: str, tag: bytes, count: int, errors: list[str]) -> None:
    try:
        rng = random.Random(tag)
        with ipcgw.connect(url, timeout=5, name=tag.decode()) as client:
            for i in range(count):
                payload = tag + i.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 20000))
                if client.ping(payload, timeout=10) != payload:
                    errors.append(f"{tag!r}: reply {i} differs")
                    return
    except Exception as exc:
        errors.append(f"{tag!r}: {exc!r}")


def run_pingers(url: str, n: int, count: int) -> list[str]:
    errors: list[str] = []
    threads = [threading.Thread(target=_pinger, args=(url, f"c{i}".encode(), count, errors))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_four_clients_no_cross_talk(server_factory, transport):
    server = server_factory(transport)
    assert run_pingers(server.url, 4, 300) == []
    server.stop_ok()


HALF_FRAME_CLIENT = textwrap.dedent("""
    import os, signal, sys
    from ipcgw.framing import make_framer
    from ipcgw.messages import Hello, Ping, decode, encode
    from ipcgw.transports import connect_bytes
    from ipcgw.url import parse_url
    ep = parse_url(sys.argv[1])
    framer = make_framer(ep.framing)
    conn = connect_bytes(ep, 5)
    conn.send(framer.encode(encode(Hello(1, ep.framing, ep.codec, "half"))))
    frames = framer.decoder().feed(conn.recv(5))
    assert type(decode(frames[0])).__name__ == "Welcome"
    frame = framer.encode(encode(Ping(1, os.urandom(100000))))
    conn.send(frame[: len(frame) // 2])
    print("sent-half", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_killed_mid_frame_costs_others_nothing(server_factory, transport):
    server = server_factory(transport)
    errors: list[str] = []
    workers = [threading.Thread(target=_pinger, args=(server.url, f"w{i}".encode(), 400, errors))
               for i in range(2)]
    for w in workers:
        w.start()
    for _ in range(3):
        half = subprocess.run([sys.executable, "-c", HALF_FRAME_CLIENT, server.url],
                              capture_output=True, timeout=30)
        assert half.returncode == -signal.SIGKILL, half.stderr.decode()
        assert b"sent-half" in half.stdout
    for w in workers:
        w.join(120)
    assert errors == []

    def half_sessions() -> tuple[int, int]:
        """(connects, ends) of the killed clients; a who-may-drive-the-kernel warning is neither."""
        lines = [line for line in server.log().splitlines()
                 if "(half," in line and "may not drive the path manager" not in line]
        connects = sum(line.endswith(") connected") for line in lines)
        return connects, len(lines) - connects

    deadline = time.monotonic() + 5  # queue transports notice a dead pid within ~1 s
    while half_sessions() != (3, 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert half_sessions() == (3, 3), server.log()  # 3 connects + 3 disconnects
    assert server.alive()
    server.stop_ok()


NON_READER = textwrap.dedent("""
    import sys, time
    import ipcgw
    from ipcgw.messages import Ping
    client = ipcgw.connect(sys.argv[1], timeout=5, name="deaf")
    try:
        for i in range(1, 2000):
            client.send(Ping(i, b"x" * 65536))
    except ipcgw.IpcgwError as exc:
        print("stopped:", type(exc).__name__, flush=True)
    time.sleep(30)
""")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_that_never_reads_is_dropped_alone(server_factory, transport):
    server = server_factory(transport, extra=["--send-timeout", "1"])
    deaf = subprocess.Popen([sys.executable, "-c", NON_READER, server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        assert run_pingers(server.url, 2, 300) == []
        deadline = time.monotonic() + 15
        while "(deaf," not in server.log() or "dropped" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert run_pingers(server.url, 1, 50) == []
    finally:
        deaf.kill()
        deaf.wait()
    server.stop_ok()


def _raw_session(url: str) -> tuple[object, object, object]:
    from ipcgw.url import parse_url

    ep = parse_url(url)
    framer = make_framer(ep.framing)
    conn = connect_bytes(ep, 5)
    return ep, framer, conn


def _read_until_closed(conn, framer, timeout: float = 10.0) -> list[object]:
    decoder = framer.decoder()
    msgs: list[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = conn.recv(max(0.01, deadline - time.monotonic()))
        except ipcgw.Disconnected:
            return msgs
        if not data:
            return msgs
        msgs += [decode(f) for f in decoder.feed(data)]
    raise AssertionError(f"server did not close; got {msgs}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_garbage_and_oversize_header_get_error_and_disconnect(server_factory, transport):
    server = server_factory(transport, "max_frame=100000")
    # 1. garbage instead of a Hello
    ep, framer, conn = _raw_session(server.url)
    conn.send(framer.encode(os.urandom(64)))
    replies = _read_until_closed(conn, framer)
    conn.close()
    assert replies and isinstance(replies[-1], Error), replies
    assert "Hello" in replies[-1].reason
    # 2. a valid session, then a length header claiming 2 GiB
    ep, framer, conn = _raw_session(server.url)
    conn.send(framer.encode(encode(Hello(1, ep.framing, ep.codec, "big"))))
    conn.send((2**31).to_bytes(4, "big") + b"xx")
    replies = _read_until_closed(conn, framer)
    conn.close()
    assert isinstance(replies[-1], Error) and "exceeds max_frame" in replies[-1].reason, replies
    # 3. an undecodable frame inside a session: Error, and the session goes on
    with ipcgw.connect(server.url, timeout=5) as client:
        client.channel.send_frame(b"\xc1garbage")
        err = client.recv(timeout=5)
        assert isinstance(err, Error) and "bad message" in err.reason
        assert client.ping(b"still here") == b"still here"
    assert server.alive()
    server.stop_ok()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigterm_leaves_nothing_and_restart_after_kill9_works(server_factory, tmp_path, transport):
    before = ipc_objects()
    url = fresh_url(transport, tmp_path)
    first = ServerProcess([url], tmp_path)
    try:
        with ipcgw.connect(first.url, timeout=5) as client:
            assert client.ping(b"a") == b"a"
            first.proc.kill()  # kill -9 while a client is connected
            first.proc.wait()
            with pytest.raises(ipcgw.IpcgwError):
                client.ping(b"b", timeout=5)
    finally:
        first.kill()
    second = ServerProcess([url], tmp_path)  # reclaims whatever the first left
    try:
        with ipcgw.connect(second.url, timeout=5) as client:
            assert client.ping(b"c") == b"c"
        second.stop_ok()
    finally:
        second.kill()
    assert ipc_objects() - before == set()
    fs_leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".log")]
    assert fs_leftovers == []


class _Stop(Exception):
    """What the test's SIGTERM handler raises."""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_signal_handler_exception_reaches_a_client_waiting_in_recv(server_factory, transport):
    """An NS-3 script blocked in recv must still stop on Ctrl-C or a SIGTERM handler
    (posix_ipc used to swallow the handler's exception)."""
    server = server_factory(transport)

    def handler(signum: int, frame: object) -> None:
        raise _Stop(signum)

    old = signal.signal(signal.SIGTERM, handler)
    timer = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with ipcgw.connect(server.url, timeout=5) as client:
            timer.start()
            start = time.monotonic()
            with pytest.raises(_Stop):
                client.recv(timeout=5)
            assert time.monotonic() - start < 1.0
            assert client.ping(b"still fine") == b"still fine"
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old)
    server.stop_ok()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_second_server_on_same_address_is_refused(server_factory, tmp_path, transport):
    url = fresh_url(transport, tmp_path).replace(":0", f":{random.randrange(20000, 60000)}")
    first = ServerProcess([url], tmp_path)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            ServerProcess([url], tmp_path)
        with ipcgw.connect(first.url, timeout=5) as client:
            assert client.ping(b"ok") == b"ok"
        first.stop_ok()  # and leaves nothing for the next test to reclaim
    finally:
        first.kill()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_server_gives_connect_error_within_timeout(tmp_path, transport):
    url = fresh_url(transport, tmp_path).replace(":0", ":1")
    start = time.monotonic()
    with pytest.raises(ConnectError):
        ipcgw.connect(url, timeout=1.0)
    assert time.monotonic() - start < 3.0


def test_handshake_mismatch_is_explained(server_factory):
    server = server_factory("unix", "framing=length:4")
    ep, framer, conn = _raw_session(server.url)
    conn.send(framer.encode(encode(Hello(99, ep.framing, ep.codec, "old"))))
    replies = _read_until_closed(conn, framer)
    assert "protocol version 99 not supported" in replies[-1].reason
    ep, framer, conn = _raw_session(server.url)
    conn.send(framer.encode(encode(Hello(1, "length:2", ep.codec, "x"))))
    replies = _read_until_closed(conn, framer)
    assert "client uses framing length:2" in replies[-1].reason
    other = server.url.replace("framing=length%3A4", "framing=delimited:nul").replace(
        "framing=length:4", "framing=delimited:nul")
    with pytest.raises(ConnectError, match=r"same (framing|URL)"):
        ipcgw.connect(other, timeout=3)
    server.stop()


@pytest.mark.parametrize("transport", NETNS_CROSSING)
def test_server_in_namespace_client_outside(server_factory, netns, transport):
    server = server_factory(transport, netns=netns)
    assert run_pingers(server.url, 2, 200) == []
    server.stop_ok()


@pytest.mark.parametrize("transport", ["tcp", "unix-abstract"])
def test_namespace_bound_transports_explain_why(server_factory, netns, transport):
    require_netns()
    server = server_factory(transport, netns=netns)
    with pytest.raises(ConnectError, match="namespace"):
        ipcgw.connect(server.url, timeout=1)
    server.stop_ok()


SSPI_WRITER_C = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
struct sspi { int32_t type; int32_t value; };   /* as the mptcpd sspi plugin reads it */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY);
    if (fd < 0) return 1;
    for (int i = 2; i + 1 < argc; i += 2) {
        struct sspi m = { atoi(argv[i]), atoi(argv[i + 1]) };
        if (write(fd, &m, sizeof m) != sizeof m) return 2;
    }
    return close(fd);
}
"""


def test_legacy_c_writer_is_served_like_the_sspi_plugin(tmp_path):
    src, exe = tmp_path / "w.c", tmp_path / "sspi-writer"
    src.write_text(SSPI_WRITER_C)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    fifo = tmp_path / "mptcp-ns3-fifo"
    server = ServerProcess([f"fifo://{tmp_path}?framing=fixed:8&codec=sspi"], tmp_path)
    try:
        assert server.url.startswith(f"fifo://{fifo}")
        # BACKUP_FLAG_ON 2, WIFI_SNR 17, DEL 5, END: then a second run of the writer
        subprocess.run([str(exe), str(fifo), "2", "2", "4", "17", "1", "5", "5", "0"],
                       check=True, timeout=10)
        time.sleep(0.5)  # the ended session is replaced by a fresh one
        subprocess.run([str(exe), str(fifo), "3", "2", "42", "7"], check=True, timeout=10)
        deadline = time.monotonic() + 5
        while "unknown sspi command type 42" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.log()
        assert "endpoint.set_flags {'id': 2, 'backup': True}" in log
        assert "{'snr_db': 17}" in log
        assert "endpoint.delete {'id': 5}" in log
        assert "said bye (sspi END)" in log
        assert "endpoint.set_flags {'id': 2, 'backup': False}" in log  # served after END
        assert "unknown sspi command type 42 (value 7)" in log
        server.stop_ok()
        assert not fifo.exists()
    finally:
        server.kill()


def test_sysv_rendezvous_queue_removed_under_a_live_server_is_recreated(server_factory):
    import sysv_ipc

    server = server_factory("sysv")
    key = int(server.url.split("://")[1].split("?")[0], 16)
    sysv_ipc.MessageQueue(key).remove()  # what a stray `ipcrm` does
    deadline = time.monotonic() + 5
    while True:
        try:
            with ipcgw.connect(server.url, timeout=1) as client:
                assert client.ping(b"back") == b"back"
            break
        except ConnectError:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
    server.stop_ok()


# ---------------------------------------------------------------- names removed, sessions dropped

def _shm_socket(ep: Endpoint) -> str:
    return f"/dev/shm/{ep.address.strip('/')}.sock"  # where shm.py puts its rendezvous


def _remove_sysv(ep: Endpoint) -> None:
    import sysv_ipc

    sysv_ipc.MessageQueue(int(ep.address, 0)).remove()  # what a stray `ipcrm` does


def _remove_posixmq(ep: Endpoint) -> None:
    import posix_ipc

    posix_ipc.unlink_message_queue(ep.address)


#: How a sweep of /tmp, /dev/shm or ipcrm removes the name a new client finds the server by;
#: None where no such sweep exists: a TCP port and an abstract unix name are no file or IPC
#: object, they live in the network namespace and vanish only with the listening socket.
RENDEZVOUS_REMOVERS: dict[str, Callable[[Endpoint], None] | None] = {
    "fifo": lambda ep: os.unlink(os.path.join(ep.address, "ipcgw.req")),
    "sysv": _remove_sysv,
    "posixmq": _remove_posixmq,
    "tcp": None,
    "unix": lambda ep: os.unlink(ep.address),
    "unix-abstract": None,
    "shm": lambda ep: os.unlink(_shm_socket(ep)),
}


def test_every_transport_says_whether_its_name_can_be_swept():
    assert set(RENDEZVOUS_REMOVERS) == set(TRANSPORTS)


def leftovers(url: str) -> list[str]:
    """OS objects named after the server at ``url`` that are still there: /dev/shm and
    /dev/mqueue names carrying its tag, its SysV key. By tag, not "every ipcgw* name":
    other test runs on this host make and remove their own at the same time."""
    ep = parse_url(url)
    found: list[str] = []
    if ep.scheme == "sysv":
        key = int(ep.address, 0)
        with open("/proc/sysvipc/msg") as f:
            next(f)
            found += [f"sysv:{key:#x}" for line in f if line.split() and int(line.split()[0]) == key]
    if ep.scheme != "tcp":
        tag = ep.address.strip("/@").rsplit("/", 1)[-1].removesuffix(".sock")
        assert len(tag) >= 8, tag
        for folder in ("/dev/shm", "/dev/mqueue"):
            found += [f"{folder}/{n}" for n in os.listdir(folder) if tag in n]
    return found


def fs_leftovers(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.suffix != ".log")


def test_leak_checks_look_in_dev_shm_and_dev_mqueue():
    import posix_ipc

    name = f"ipcgwt{os.urandom(4).hex()}"
    shm = posix_ipc.SharedMemory(f"/{name}", posix_ipc.O_CREX, 0o600, 4096)
    mq = posix_ipc.MessageQueue(f"/{name}", posix_ipc.O_CREX, 0o600)
    try:
        assert {f"shm:{name}", f"mq:{name}"} <= ipc_objects()
        assert sorted(leftovers(f"shm:///{name}")) == [f"/dev/mqueue/{name}", f"/dev/shm/{name}"]
    finally:
        shm.close_fd()
        shm.unlink()
        mq.close()
        mq.unlink()
    assert leftovers(f"shm:///{name}") == []


NAMED = [t for t in TRANSPORTS if RENDEZVOUS_REMOVERS[t] is not None]


def test_only_tcp_and_abstract_sockets_have_no_name_to_remove():
    """Their names live in the network namespace (a port, an abstract address): no
    file-system sweep or ipcrm can take them away, so they need no healing."""
    assert sorted(set(TRANSPORTS) - set(NAMED)) == ["tcp", "unix-abstract"]


@pytest.mark.parametrize("transport", NAMED)
def test_rendezvous_name_removed_under_a_live_server_comes_back(server_factory, tmp_path, transport):
    """A /tmp or /dev/shm cleaner (or ipcrm) removes the name: within 5 s a new
    client connects again, and a client already in session never notices."""
    remove = RENDEZVOUS_REMOVERS[transport]
    assert remove is not None
    server = server_factory(transport)
    ep = parse_url(server.url)
    with ipcgw.connect(server.url, timeout=5, name="old") as old:
        assert old.ping(b"before") == b"before"
        remove(ep)
        start = time.monotonic()
        while True:
            try:
                with ipcgw.connect(server.url, timeout=1, name="new") as new:
                    assert new.ping(b"new", timeout=2) == b"new"
                break
            except ipcgw.IpcgwError as exc:
                assert time.monotonic() - start < 5, f"{exc}\n{server.log()}"
                time.sleep(0.1)
        assert old.ping(b"after", timeout=5) == b"after"
    server.stop_ok()
    assert leftovers(server.url) == []
    assert fs_leftovers(tmp_path) == []


DROPPED_CLIENT = textwrap.dedent("""
    import sys, time
    import ipcgw
    from ipcgw.messages import Ping
    how, url = sys.argv[1], sys.argv[2]
    client = ipcgw.connect(url, timeout=5, name="dropped")
    start = time.time()
    print("start", start, flush=True)
    try:
        if how == "oversize":  # the server refuses the frame at its header, says why, closes
            client.send(Ping(1, b"x" * 200000))
            while time.time() - start < 15:
                try:
                    print("got", type(client.recv(timeout=0.5)).__name__, flush=True)
                except ipcgw.Timeout:
                    pass
        else:  # never reads: the server gives up posting Pongs after --send-timeout
            for i in range(1, 1000000):
                client.send(Ping(i, b"x" * 65536))
                if time.time() - start > 20:
                    break
        print("never raised", flush=True)
    except ipcgw.IpcgwError as exc:
        print("raised", time.time(), type(exc).__name__, exc, flush=True)
""")


def _log_time(line: str) -> float:
    import datetime

    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@pytest.mark.parametrize("how", ["oversize", "never-reads"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dropped_session_is_disconnected_within_6_s(server_factory, tmp_path, transport, how):
    """However the server drops a session, the client's next send or recv raises
    Disconnected within 6 s of the drop: never a hang, never a silent success."""
    server = server_factory(transport, "max_frame=100000", extra=["--send-timeout", "1"])
    url = server.url.replace("max_frame=100000", f"max_frame={1 << 20}")  # lets us send too much
    try:
        out = subprocess.run([sys.executable, "-c", DROPPED_CLIENT, how, url], capture_output=True,
                             text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the dropped client hung (killed after 30 s)\n{server.log()}")
    assert "raised" in out.stdout, (out.stdout, out.stderr, server.log())
    raised = out.stdout.split("raised ", 1)[1]
    assert raised.split()[1] == "Disconnected", raised
    ends = [line for line in server.log().splitlines() if "(dropped," in line]  # the last: closed
    assert ends, server.log()
    since = _log_time(ends[-1]) if how == "never-reads" else float(out.stdout.split()[1])
    assert float(raised.split()[0]) - since <= 6.0, (raised, ends[-1], out.stdout)
    assert server.alive()
    server.stop_ok()
    assert leftovers(server.url) == []
    assert fs_leftovers(tmp_path) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bulk_payloads_held_by_the_reader_stay_intact_while_more_frames_arrive(
        server_factory, transport):
    """Bulk payloads arrive as read-only views onto their frames, and a frame's buffer
    is reused for a later frame of the same size: only once no view holds it. Four
    Pong payloads of one size held at once must each keep their own bytes (without
    the guard, a reused buffer rewrote the earlier payloads with the later frames')."""
    server = server_factory(transport)
    payloads = [bytes([i]) * 3 + os.urandom(200_000) for i in range(4)]
    with ipcgw.connect(server.url, timeout=5, name="bulk") as client:
        for round_ in range(2):  # the second round runs on recycled buffers
            replies = [client.ping(payload, timeout=10) for payload in payloads]
            for seq, (reply, payload) in enumerate(zip(replies, payloads, strict=True)):
                assert type(reply) is memoryview and reply.readonly
                assert reply == payload, (round_, seq)
            del replies, reply
    server.stop_ok()
