"""Unix sockets against another local user: squatted names, fake servers, who the peer is.

The attacker is a fresh unprivileged user (the ``attacker`` fixture) working in a
world-writable sticky directory, as /tmp is; the server and the clients are root.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import ServerProcess

import ipcgw
from ipcgw.errors import ConnectError
from ipcgw.transports import connect_bytes, listen
from ipcgw.transports.base import ServerLock
from ipcgw.url import parse_url


@pytest.fixture
def sticky_dir() -> Iterator[Path]:
    """A directory like /tmp (mode 1777) that only this test uses."""
    path = Path(tempfile.mkdtemp(prefix="ipcgwt-sticky-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: Run by the attacker: put something at argv[1] before root's server starts.
SQUAT = textwrap.dedent("""
    import os, socket, sys, time
    path, how = sys.argv[1], sys.argv[2]
    if how == "symlink":
        os.symlink("/etc/shadow", path)
    elif how == "file":
        open(path, "w").close()
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("\\0" + path[1:] if path.startswith("@") else path)
        if not path.startswith("@"):
            os.chmod(path, 0o777)
        s.listen(8)
        if how == "stale":
            s.close()  # the file stays, nobody listens: what a crashed server leaves
    print("ready", flush=True)
    if how == "live":  # a fake gateway: answers anything with a length-prefixed blob
        while True:
            c, _ = s.accept()
            try:  # a refusing client may already be gone: the fake server must live on
                c.sendall(b"\\0\\0\\0\\x04fake")
            except OSError:
                pass
""")


def squat(attacker, path: str, how: str):
    proc = attacker.popen_python(SQUAT, path, how)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _last_line(log: str) -> str:
    return [line for line in log.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("how", ["live", "stale", "symlink", "file"])
def test_server_refuses_a_path_another_user_put_there(attacker, sticky_dir, tmp_path, how):
    """Before: a stale squatter socket was unlinked and the name taken over, a live one
    refused without saying whose it is; now each is one line naming the owner."""
    path = str(sticky_dir / "ipcgw.sock")
    proc = squat(attacker, path, how)
    try:
        with pytest.raises(RuntimeError, match="exited") as info:
            ServerProcess([f"unix://{path}"], tmp_path)
        line = _last_line(str(info.value))
        assert "Traceback" not in str(info.value)
        if how == "symlink":
            assert f"{path} is a symbolic link" in line and "rm " in line, line
        else:
            assert f"owned by uid {attacker.uid} ({attacker.name})" in line, line
            assert "squatting" in line and f"rm {path}" in line, line
        assert os.lstat(path).st_uid == attacker.uid  # left alone: not ours to remove
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_root_client_refuses_a_server_run_by_another_user(attacker, sticky_dir, where):
    """Before: the root client talked to the attacker's fake server."""
    address = str(sticky_dir / "fake.sock") if where == "path" else f"@ipcgwt-fake-{os.getpid()}"
    url = f"unix://{address}" if where == "path" else f"unix:{address}"
    proc = squat(attacker, address, "live")
    try:
        with pytest.raises(ConnectError, match=rf"served by uid {attacker.uid} \({attacker.name}\)"
                                               rf".*a squatter\?.*server_uid={attacker.uid}"):
            ipcgw.connect(url, timeout=2)
        with pytest.raises(ConnectError, match="a squatter"):
            connect_bytes(url, 2)
        # trusted on purpose: the URL names the uid
        conn = connect_bytes(f"{url}?server_uid={attacker.uid}", 2)
        try:
            assert conn.peer_uid == attacker.uid
            assert conn.recv(2) == b"\0\0\0\x04fake"
        finally:
            conn.close()
        with pytest.raises(ConnectError, match="server_uid takes uid numbers"):
            connect_bytes(f"{url}?server_uid=bob", 2)
    finally:
        proc.kill()
        proc.wait()


CONNECT = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    a = sys.argv[1]
    s.connect("\\0" + a[1:] if a.startswith("@") else a)
    s.sendall(b"hi")
    s.recv(1)
""")


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_accepted_unix_sessions_carry_the_peers_uid_and_gid(attacker, sticky_dir, where):
    address = str(sticky_dir / "s.sock") if where == "path" else f"@ipcgwt-cred-{os.getpid()}"
    url = f"unix://{address}?mode=0666" if where == "path" else f"unix:{address}"
    listener = listen(url)
    try:
        proc = attacker.popen_python(CONNECT, address)
        theirs = listener.accept()
        assert (theirs.peer_uid, theirs.peer_gid) == (attacker.uid, attacker.gid)
        assert f"uid {attacker.uid}" in theirs.peer
        assert theirs.recv(2) == b"hi"
        theirs.close()
        proc.wait(10)
        ours = connect_bytes(url, 2)
        mine = listener.accept()
        assert (mine.peer_uid, mine.peer_gid) == (os.geteuid(), os.getegid())
        assert ours.peer_uid == os.geteuid()  # the client side knows who serves it
        ours.close()
        mine.close()
    finally:
        listener.close()
    if where == "path":
        assert not os.path.exists(address)


def test_tcp_sessions_have_no_peer_uid():
    listener = listen("tcp://127.0.0.1:0")
    try:
        client = connect_bytes(listener.endpoint, 2)
        conn = listener.accept()
        assert conn.peer_uid is None and conn.peer_gid is None
        client.close()
        conn.close()
    finally:
        listener.close()


@pytest.mark.parametrize("mode", [0o600, 0o660], ids=["0600", "0660"])
def test_socket_file_has_the_endpoints_mode_and_nothing_else_is_left(tmp_path, mode):
    path = tmp_path / "m.sock"
    old = os.umask(0)  # a careless parent's umask must not loosen the socket
    try:
        listener = listen(f"unix://{path}?mode={mode:04o}")
        assert os.umask(0) == 0  # and the other threads' umask was never changed
    finally:
        os.umask(old)
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sock"]  # no private dir left
    finally:
        listener.close()
    assert list(tmp_path.iterdir()) == []


def _accepting(listener) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                conn = listener.accept()
            except Exception:
                return
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_removed_socket_file_comes_back_with_its_mode(tmp_path, caplog):
    path = tmp_path / "h.sock"
    listener = listen(f"unix://{path}")
    thread = _accepting(listener)
    try:
        first = path.lstat().st_ino
        path.unlink()
        deadline = time.monotonic() + 3
        while not path.exists():
            assert time.monotonic() < deadline, "not re-made within 3 s"
            time.sleep(0.05)
        st = path.lstat()
        assert st.st_ino != first and stat.S_IMODE(st.st_mode) == 0o600
        connect_bytes(f"unix://{path}", 2).close()
        assert [r.getMessage() for r in caplog.records if "bound a new one" in r.getMessage()] != []
    finally:
        listener.close()
        thread.join(5)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_socket_file_replaced_by_another_user_is_neither_taken_over_nor_removed(
        attacker, sticky_dir, tmp_path):
    """Before: the server's shutdown unlinked whatever was at its path, here the attacker's file."""
    path = str(sticky_dir / "r.sock")
    server = ServerProcess([f"unix://{path}"], tmp_path)
    try:
        os.unlink(path)  # a /tmp cleaner...
        proc = squat(attacker, path, "live")  # ...and the attacker is quicker than the 1 s check
        try:
            time.sleep(2.5)
            assert os.lstat(path).st_uid == attacker.uid
            log = server.log()
            assert log.count("not binding a new one") == 1, log  # one line, not one a second
            assert f"owned by uid {attacker.uid}" in log
            with pytest.raises(ConnectError, match="a squatter"):
                ipcgw.connect(server.url, timeout=2)
            server.stop_ok()
            assert os.lstat(path).st_uid == attacker.uid  # not removed by our shutdown
        finally:
            proc.kill()
            proc.wait()
    finally:
        server.kill()


def test_a_name_another_live_server_took_is_not_taken_back(tmp_path):
    """Both the socket file and the lock file are swept; a second server starts on the
    name. The first must neither rebind there nor remove the second's file when it stops."""
    url = f"unix://{tmp_path}/t.sock"
    first = ServerProcess([url], tmp_path)
    second = None
    try:
        os.unlink(tmp_path / "t.sock")
        os.unlink(ServerLock("unix", str(tmp_path / "t.sock")).path)
        second = ServerProcess([url], tmp_path)
        time.sleep(2.5)  # two of the first's checks
        assert "not binding a new one" in first.log() and "bound a new one" not in first.log()
        first.stop_ok()
        with ipcgw.connect(url, timeout=2, name="to-second") as client:
            assert client.ping(b"2") == b"2"
        assert "(to-second," in second.log()
        second.stop_ok()
        assert not (tmp_path / "t.sock").exists()
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_abstract_name_in_use_is_one_clear_line():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"ipcgwt-busy-{os.getpid()}"
    sock.bind("\0" + name)
    try:
        with pytest.raises(ConnectError, match=f"cannot listen on unix:@{name}: .*pick another name"):
            listen(parse_url(f"unix:@{name}"))
    finally:
        sock.close()
