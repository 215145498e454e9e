"""Attacks on the SysV and POSIX queue transports (issues #19, #13.3, #22, #14.8), each
against a real root server process, each refused while legitimate clients are served.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest
import sysv_ipc
from conftest import LocalUser, require_netns
from gateway_helpers import ServerProcess

import ipcgw
from ipcgw.errors import ConnectError
from ipcgw.transports import listen
from ipcgw.transports._mq import pack_hello
from ipcgw.transports.base import Connection, Listener, ServerLock

ROOT = Path(__file__).resolve().parents[1]
#: Lets the attacker's stdlib python import ipcgw from the tree and the venv (same 3.11 ABI).
ATTACKER_PATH = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {sysconfig.get_paths()['platlib']!r}]\n"


def _key() -> int:
    return random.randrange(0x10000000, 0x7FFFFFFF)


def _sysv_ids() -> set[int]:
    with open("/proc/sysvipc/msg") as f:
        next(f)
        return {int(line.split()[1]) for line in f if line.strip()}


@pytest.fixture
def sysv_cleanup() -> Iterator[None]:
    """Every SysV queue made during the test is removed, pass or fail."""
    before = _sysv_ids()
    yield
    with open("/proc/sysvipc/msg") as f:
        next(f)
        rows = [line.split() for line in f if line.strip()]
    for row in rows:
        if int(row[1]) not in before:
            with contextlib.suppress(sysv_ipc.Error):
                sysv_ipc.MessageQueue(int(row[0])).remove()


def _ping_ok(url: str, timeout: float = 5.0) -> float:
    start = time.monotonic()
    with ipcgw.connect(url, timeout=timeout) as client:
        assert client.ping(b"legit") == b"legit"
    return time.monotonic() - start


# --- #19.3/#19.6: record and lock files --------------------------------------------------

MSGGET = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
qid = libc.msgget(int(sys.argv[1]), 0o1000 | 0o600)
print(qid)
"""


def test_sysv_forged_record_in_tmp_removes_nobody_s_queue(attacker: LocalUser, tmp_path: Path,
                                                          sysv_cleanup: None) -> None:
    """Before: root removed every queue listed in a pre-written /tmp/ipcgw-sysv-KEY.queues."""
    key, victim_key = _key(), _key()
    r = attacker.run_python(MSGGET, str(victim_key))
    assert r.returncode == 0 and int(r.stdout) >= 0, r.stderr
    target = tmp_path / "precious"
    target.write_text("keep\n")
    stem = f"{tempfile.gettempdir()}/ipcgw-sysv-{key:#x}"
    planted = [f"{stem}.queues", f"{stem}.lock", *(f"{stem}.queues.{os.getpid() + i}" for i in range(1, 200))]
    r = attacker.run_python(
        "import os, sys\nopen(sys.argv[1], 'w').write(sys.argv[2] + '\\n')\n"
        "for p in sys.argv[4:]: os.symlink(sys.argv[3], p)\n",
        planted[0], str(victim_key), str(target), *planted[1:])
    assert r.returncode == 0, r.stderr
    server = ServerProcess([f"sysv://{key:#x}"], tmp_path)
    try:
        _ping_ok(server.url)
        assert sysv_ipc.MessageQueue(victim_key).cuid == attacker.uid  # still there
        assert target.read_text() == "keep\n"
        server.stop_ok()
    finally:
        server.kill()
        for p in planted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    assert target.read_text() == "keep\n"


def test_sysv_record_is_trusted_only_for_the_queue_ids_it_names(tmp_path: Path,
                                                                sysv_cleanup: None) -> None:
    """A recorded key reused by another program (a new id) is not removed, and a queue
    at the server's key that it never made is refused with a hint, not removed."""
    require_netns()
    key = _key()
    other = sysv_ipc.MessageQueue(_key(), sysv_ipc.IPC_CREX)  # "another application"
    record = ServerLock("sysv", f"{key:#x}").path.removesuffix(".lock") + ".queues"
    with open(os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"{other.key} {other.id + 1}\n")
    lst = listen(f"sysv://{key:#x}")
    lst.close()
    assert sysv_ipc.MessageQueue(other.key).id == other.id
    squatter = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX)
    with pytest.raises(ipcgw.IpcgwError, match=r"did not create.*ipcrm -Q") as err:
        listen(f"sysv://{key:#x}")
    assert "\n" not in str(err.value)
    assert sysv_ipc.MessageQueue(key).id == squatter.id


# --- #19.2: the sysv rendezvous -------------------------------------------------------------

def test_sysv_junk_of_other_types_cannot_block_the_rendezvous(tmp_path: Path,
                                                              sysv_cleanup: None) -> None:
    """Before: messages of any type but 1 stayed on the rendezvous for good; once it
    was full every connect failed ("rendezvous queue full")."""
    require_netns()
    server = ServerProcess([f"sysv://{_key():#x}"], tmp_path)
    try:
        rz = sysv_ipc.MessageQueue(int(server.url.split("//")[1].split("?")[0], 16))
        stop = threading.Event()

        def flood() -> None:
            while not stop.is_set():
                with contextlib.suppress(sysv_ipc.BusyError):
                    rz.send(b"j" * 512, block=False, type=random.randrange(2, 1 << 30))

        threading.Thread(target=flood, daemon=True).start()
        try:
            time.sleep(0.3)
            took = [_ping_ok(server.url, 5) for _ in range(5)]
        finally:
            stop.set()
        assert max(took) < 5
        assert server.alive()
        server.stop_ok()
    finally:
        server.kill()


def test_sysv_rogue_hellos_create_no_queues(tmp_path: Path, sysv_cleanup: None) -> None:
    """Before: 2,470 hellos with a live pid made the server create 1,538 queues and
    515 sessions, and legitimate clients were refused for ~20 s."""
    require_netns()
    server = ServerProcess([f"sysv://{_key():#x}"], tmp_path)
    try:
        rz = sysv_ipc.MessageQueue(int(server.url.split("//")[1].split("?")[0], 16))
        victim = sysv_ipc.MessageQueue(_key(), sysv_ipc.IPC_CREX)  # a client's queue, nonce inside
        victim.send(b"n" * 16, block=False, type=5)
        hellos = [pack_hello(1, victim.key, 0, text=f"{victim.id}:{secrets.token_hex(16)}".encode()),
                  pack_hello(1, 2, 0), pack_hello(1, 0x7FFFFFFF, 0, text=b"1:00")]
        before = _sysv_ids()
        sent, most = 0, 0
        end = time.monotonic() + 3
        while time.monotonic() < end:
            for h in hellos:
                with contextlib.suppress(sysv_ipc.BusyError):
                    rz.send(h, block=False, type=1)
                    sent += 1
            if sent % 300 < 3:
                most = max(most, len(_sysv_ids() - before))
        took = _ping_ok(server.url, 5)  # served right after the flood
        assert sent > 1000
        assert most <= 2  # at most a legit client's pair, never one per rogue hello
        assert took < 5
        assert victim.receive(block=False, type=5)[0] == b"n" * 16  # its nonce was put back
        server.stop_ok()
    finally:
        server.kill()


# --- #22, #14.8: posixmq rendezvous ------------------------------------------------------------

def test_posixmq_removed_rendezvous_is_recreated(tmp_path: Path) -> None:
    """Before: after ``rm /dev/mqueue/NAME`` no new client could connect, ever."""
    require_netns()
    server = ServerProcess([f"posixmq:///ipcgwt{secrets.token_hex(4)}"], tmp_path)
    try:
        name = server.url.split("//")[1].split("?")[0]
        _ping_ok(server.url)
        posix_ipc.unlink_message_queue(name)
        start = time.monotonic()
        while True:
            try:
                _ping_ok(server.url, 1)
                break
            except ConnectError:
                assert time.monotonic() - start < 5, server.log()
                time.sleep(0.1)
        assert "recreated" in server.log()
        server.stop_ok()
    finally:
        server.kill()


def test_posixmq_mode_is_exact_under_a_umask(tmp_path: Path) -> None:
    """Before: ?mode=0660 became 0640 under umask 022 (fifo, unix and sysv honour it)."""
    require_netns()
    old = os.umask(0o022)
    try:
        server = ServerProcess([f"posixmq:///ipcgwt{secrets.token_hex(4)}?mode=0660"], tmp_path)
    finally:
        os.umask(old)
    try:
        name = server.url.split("//")[1].split("?")[0]
        assert stat.S_IMODE(os.stat(f"/dev/mqueue{name}").st_mode) == 0o660
        server.stop_ok()
    finally:
        server.kill()


# --- #13.3: a dropped session is Disconnected, never a hang -----------------------------------

DROPPED = """
import sys, time
from ipcgw.transports import connect_bytes
conn = connect_bytes(sys.argv[1], 5)
start = time.time()
try:
    conn.send(b"\\xff\\xff\\xff\\x00" + b"x" * (8 << 20))  # an oversize frame, then its bytes
    print("sent all", flush=True)
except Exception as e:
    print("raised", type(e).__name__, round(time.time() - start, 2), flush=True)
"""


@pytest.mark.parametrize("transport", ["posixmq", "sysv"])
def test_client_dropped_by_a_live_server_gets_disconnected(tmp_path: Path, transport: str,
                                                           sysv_cleanup: None) -> None:
    """Before (posixmq): the client's send retried forever while the server lived on."""
    require_netns()
    url = f"posixmq:///ipcgwt{secrets.token_hex(4)}" if transport == "posixmq" else f"sysv://{_key():#x}"
    server = ServerProcess([url], tmp_path, extra=["--send-timeout", "1"])
    try:
        r = subprocess.run([sys.executable, "-c", ATTACKER_PATH + DROPPED, server.url],
                           capture_output=True, text=True, timeout=30)
        words = r.stdout.split()
        assert words[:2] == ["raised", "Disconnected"], (r.stdout, r.stderr)
        assert float(words[2]) < 6
        _ping_ok(server.url)
        server.stop_ok()
    finally:
        server.kill()


# --- peer identity ---------------------------------------------------------------------------

CLIENT = ATTACKER_PATH + """
from ipcgw.transports import connect_bytes
conn = connect_bytes(sys.argv[1], 5)
conn.send(b"hi")
conn.recv(5)
"""


def _accept_within(lst: Listener, timeout: float, proc: subprocess.Popen[str]) -> Connection:
    got: list[Connection] = []
    t = threading.Thread(target=lambda: got.append(lst.accept()), daemon=True)
    t.start()
    t.join(timeout)
    if not got:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no connection within {timeout} s; client said: {err}")
    return got[0]


@pytest.mark.parametrize("transport", ["posixmq", "sysv"])
def test_peer_uid_is_the_client_queue_owner(attacker: LocalUser, transport: str,
                                            sysv_cleanup: None) -> None:
    base = f"posixmq:///ipcgwt{secrets.token_hex(4)}" if transport == "posixmq" else f"sysv://{_key():#x}"
    lst = listen(base + "?mode=0622")  # others may say hello
    try:
        seen = []
        for who, query in (("attacker", ""), ("attacker", "?mode=0666"), ("root", "")):
            url = base + query
            if who == "attacker":
                proc = attacker.popen_python(CLIENT, url)
            else:
                proc = subprocess.Popen([sys.executable, "-c", CLIENT, url], text=True,
                                        stderr=subprocess.PIPE)
            conn = _accept_within(lst, 10, proc)
            assert conn.recv(5) == b"hi"
            seen.append((conn.peer_uid, conn.peer_gid))
            conn.send(b"bye")
            assert proc.wait(10) == 0
            conn.close()
        assert seen == [(attacker.uid, attacker.gid), (None, None), (0, 0)]
    finally:
        lst.close()
