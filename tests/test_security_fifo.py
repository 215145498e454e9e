"""Attacks by another local user on a root fifo server (issues #19, #22, #13.8).

Each test runs a real ``ipcgw serve`` as root at a fresh path under /tmp (never
the default /tmp/ipcgw) that the ``attacker`` fixture could pre-create, shows
the attack refused with a clear line, and that the server, or a server at a
path nobody tampered with, keeps serving legitimate clients. This host has
fs.protected_symlinks/fifos/regular = 0: nothing here relies on them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LocalUser
from gateway_helpers import ServerProcess

import ipcgw
from ipcgw.errors import ConnectError
from ipcgw.transports.base import ServerLock
from ipcgw.transports.fifo import REQUEST


@pytest.fixture
def tmp_names() -> Iterator[list[str]]:
    """Fresh names directly under /tmp (where an attacker can make them first), removed afterwards."""
    made: list[str] = []
    yield made
    for path in made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("fifo", path).path)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def fresh(names: list[str], prefix: str) -> str:
    path = f"/tmp/{prefix}-{uuid.uuid4().hex[:8]}"
    names.append(path)
    return path


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()


def start(servers: list[ServerProcess], url: str, tmp_path: Path) -> ServerProcess:
    server = ServerProcess([url], tmp_path)
    servers.append(server)
    return server


def refused(url: str, tmp_path: Path) -> str:
    """The server's words when it refuses to start on ``url``."""
    with pytest.raises(RuntimeError, match="exited") as info:
        ServerProcess([url], tmp_path)
    return str(info.value)


def still_serves(url: str) -> None:
    with ipcgw.connect(url, timeout=5) as client:
        assert client.ping(b"legit") == b"legit"


def as_attacker(attacker: LocalUser, code: str, *args: str) -> None:
    result = attacker.run_python(code, *args)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the server's directory


@pytest.mark.parametrize("mode", [0o777, 0o700])
def test_directory_precreated_by_another_user_is_refused(
        attacker: LocalUser, tmp_names: list[str], servers: list[ServerProcess],
        tmp_path: Path, mode: int) -> None:
    """Before: root served in the attacker's 0777 DIR, and swapping a connecting client's
    .s2c for a symlink made it write a Welcome and a Pong into a root file (4 of 5 runs)."""
    folder = fresh(tmp_names, "ipcgw-sec")
    as_attacker(attacker, "import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], int(sys.argv[2]))",
                folder, str(mode))
    words = refused(f"fifo://{folder}", tmp_path)
    assert f"{folder} is owned by uid {attacker.uid}" in words
    assert "remove it or pick another path" in words
    assert os.listdir(folder) == []  # nothing of root's in it
    still_serves(start(servers, f"fifo://{fresh(tmp_names, 'ipcgw-ok')}", tmp_path).url)


def test_own_directory_writable_by_others_is_refused(tmp_names: list[str], tmp_path: Path) -> None:
    folder = fresh(tmp_names, "ipcgw-sec")
    os.mkdir(folder)
    os.chmod(folder, 0o777)
    words = refused(f"fifo://{folder}", tmp_path)
    assert "writable by group/others (mode 0777)" in words
    assert "remove it or pick another path" in words


def test_directory_symlink_is_not_followed(attacker: LocalUser, tmp_names: list[str],
                                           tmp_path: Path) -> None:
    target = tmp_path / "roots-own-dir"  # a root directory the attacker wants root to work in
    target.mkdir(mode=0o700)
    folder = fresh(tmp_names, "ipcgw-sec")
    as_attacker(attacker, "import os, sys; os.symlink(sys.argv[2], sys.argv[1])", folder, str(target))
    assert "is a symbolic link" in refused(f"fifo://{folder}", tmp_path)
    assert list(target.iterdir()) == []


def test_client_refuses_a_directory_another_user_controls(
        attacker: LocalUser, tmp_names: list[str]) -> None:
    """A fake server in an attacker's directory: a root client must not make its FIFOs there."""
    folder = fresh(tmp_names, "ipcgw-sec")
    fake = attacker.popen_python(
        "import os, sys, time\n"
        "d = sys.argv[1]; os.mkdir(d); os.chmod(d, 0o777)\n"
        "os.mkfifo(d + '/ipcgw.req', 0o666); os.chmod(d + '/ipcgw.req', 0o666)\n"
        "fd = os.open(d + '/ipcgw.req', os.O_RDWR)\n"
        "print('READY', flush=True); time.sleep(30)\n", folder)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "READY"
        start_time = time.monotonic()
        with pytest.raises(ConnectError, match=f"owned by uid {attacker.uid}"):
            ipcgw.connect(f"fifo://{folder}", timeout=3)
        assert time.monotonic() - start_time < 1
        assert fifos(folder) == [REQUEST]  # no FIFO pair of ours was made there
    finally:
        fake.kill()
        fake.communicate()


# ---------------------------------------------------------------- the client FIFOs


def hello(server_dir: str, pid: int, token: str) -> None:
    fd = os.open(os.path.join(server_dir, REQUEST), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, f"IPCGW-FIFO 1 {pid} {token}\n".encode())
    finally:
        os.close(fd)


def fifos(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def wait_for(server: ServerProcess, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert text in log, log
    return log


def test_client_fifo_swapped_for_a_symlink_is_not_written_through(
        attacker: LocalUser, tmp_names: list[str], servers: list[ServerProcess], tmp_path: Path) -> None:
    """Defence in depth, should anyone ever get a name into the directory: a .s2c that is
    a symlink to a root file, and a pair owned by another uid, are refused, not opened."""
    folder = fresh(tmp_names, "ipcgw-sec")
    server = start(servers, f"fifo://{folder}", tmp_path)
    target = tmp_path / "root-secret"
    target.write_bytes(b"root data\n")
    token = uuid.uuid4().hex[:16]
    os.mkfifo(os.path.join(folder, f"c1-{token}.c2s"), 0o600)
    os.symlink(target, os.path.join(folder, f"c1-{token}.s2c"))
    hello(folder, 1, token)
    wait_for(server, f"c1-{token}.s2c is a symbolic link")
    assert target.read_bytes() == b"root data\n"
    token = uuid.uuid4().hex[:16]
    for end in ("c2s", "s2c"):
        os.mkfifo(os.path.join(folder, f"c2-{token}.{end}"), 0o666)
        os.chown(os.path.join(folder, f"c2-{token}.{end}"), attacker.uid, attacker.gid)
    hello(folder, 2, token)
    wait_for(server, f"c2-{token}.c2s is owned by uid {attacker.uid}")
    assert fifos(folder) == [REQUEST]  # both refused pairs were removed
    still_serves(server.url)
    server.stop_ok()


# ---------------------------------------------------------------- the request FIFO (#22)


@pytest.mark.parametrize("what", ["request FIFO", "directory"])
def test_request_fifo_removed_under_a_live_server_comes_back(
        tmp_names: list[str], servers: list[ServerProcess], tmp_path: Path, what: str) -> None:
    """Before: after ``rm DIR/ipcgw.req`` no new client could ever connect."""
    folder = fresh(tmp_names, "ipcgw-sec")
    server = start(servers, f"fifo://{folder}", tmp_path)
    with ipcgw.connect(server.url, timeout=5) as old:
        if what == "directory":
            shutil.rmtree(folder)
        else:
            os.unlink(os.path.join(folder, REQUEST))
        start_time, last = time.monotonic(), None
        while time.monotonic() - start_time < 5:
            try:
                still_serves(server.url)
                break
            except ConnectError as exc:
                last = exc
                time.sleep(0.1)
        else:
            pytest.fail(f"no new client within 5 s: {last}\n{server.log()}")
        assert old.ping(b"old") == b"old"  # the session that was open is untouched
    assert f"{what} {folder if what == 'directory' else os.path.join(folder, REQUEST)} was removed" \
        in server.log()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    server.stop_ok()
    assert not os.path.exists(folder)


# ---------------------------------------------------------------- the legacy sspi FIFO


def test_legacy_fifo_of_another_user_is_refused(
        attacker: LocalUser, tmp_names: list[str], servers: list[ServerProcess], tmp_path: Path) -> None:
    """Before: root reused the attacker's FIFO and chmodded it; the attacker set it back to
    0666 and its records reached the handler (endpoint.set_flags id 9)."""
    path = fresh(tmp_names, "mptcp-ns3-fifo")
    as_attacker(attacker, "import os, sys; os.mkfifo(sys.argv[1]); os.chmod(sys.argv[1], 0o666)", path)
    words = refused(f"fifo://{path}?codec=sspi", tmp_path)
    assert f"{path} is a FIFO of uid {attacker.uid}, not of this server" in words
    assert f"remove it (rm {path})" in words
    assert os.stat(path).st_uid == attacker.uid and stat.S_IMODE(os.stat(path).st_mode) == 0o666
    good = fresh(tmp_names, "mptcp-ns3-fifo")
    server = start(servers, f"fifo://{good}?codec=sspi", tmp_path)
    write_records(good, struct.pack("=ii", 2, 4))  # BACKUP_FLAG_ON endpoint 4
    wait_for(server, "endpoint.set_flags {'id': 4, 'backup': True}")
    assert stat.S_IMODE(os.stat(good).st_mode) == 0o600
    server.stop_ok()
    assert not os.path.exists(good)


def test_legacy_symlink_does_not_get_another_fifo_chmodded(
        attacker: LocalUser, tmp_names: list[str], tmp_path: Path) -> None:
    """Before: a symlink at the path made root chmod its own victim FIFO to the URL's mode."""
    victim = tmp_path / "roots-fifo"
    os.mkfifo(victim, 0o600)
    path = fresh(tmp_names, "mptcp-ns3-fifo")
    as_attacker(attacker, "import os, sys; os.symlink(sys.argv[2], sys.argv[1])", path, str(victim))
    words = refused(f"fifo://{path}?codec=sspi&mode=0666", tmp_path)
    assert "is a symbolic link" in words and f"rm {path}" in words
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert os.path.islink(path)  # not ours to remove


def test_legacy_regular_file_at_the_path_is_refused(
        attacker: LocalUser, tmp_names: list[str], tmp_path: Path) -> None:
    path = fresh(tmp_names, "mptcp-ns3-fifo")
    as_attacker(attacker, "import sys; open(sys.argv[1], 'w').write('x')", path)
    assert "is not a FIFO" in refused(f"fifo://{path}?codec=sspi", tmp_path)


# ---------------------------------------------------------------- legacy record alignment (#13.8)


def write_records(path: str, data: bytes, die: bool = False) -> None:
    """A writer process: opens the FIFO, writes ``data``, then closes it (or is killed)."""
    code = ("import os, sys, signal\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
            "os.write(fd, bytes.fromhex(sys.argv[2]))\n"
            "if sys.argv[3] == 'die': os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, path, data.hex(), "die" if die else "close"],
                   timeout=10, check=not die)


def test_legacy_writer_killed_mid_record_does_not_misalign_the_next(
        tmp_names: list[str], servers: list[ServerProcess], tmp_path: Path) -> None:
    """Before: 4 bytes left by a dying writer shifted every later record (a bogus command)."""
    path = fresh(tmp_names, "mptcp-ns3-fifo")
    server = start(servers, f"fifo://{path}?codec=sspi", tmp_path)
    write_records(path, struct.pack("=i", 2), die=True)  # half a record, then SIGKILL
    write_records(path, struct.pack("=ii", 2, 7) + struct.pack("=ii", 5, 0))  # set_flags 7, END
    log = wait_for(server, "endpoint.set_flags {'id': 7, 'backup': True}")
    assert f"sspi writer on {path} closed mid-record: dropped 4 byte(s) of a 8-byte record" in log
    assert "unknown sspi command" not in log
    wait_for(server, "said bye (sspi END)")
    time.sleep(0.5)  # the ended session is replaced by a fresh one
    write_records(path, struct.pack("=ii", 3, 8))  # BACKUP_FLAG_OFF endpoint 8
    wait_for(server, "endpoint.set_flags {'id': 8, 'backup': False}")
    server.stop_ok()
