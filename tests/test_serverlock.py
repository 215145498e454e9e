"""ServerLock and the private run directory: lock files no other user can plant or redirect.

The attacks of issue #19 (items 3 and 6): a symlink at the lock path in /tmp made
a root server truncate its target and write its pid there.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import LocalUser, require_netns
from gateway_helpers import ServerProcess

from ipcgw.errors import ConnectError, TransportError
from ipcgw.transports import listen
from ipcgw.transports.base import SYSTEM_RUN_DIR, ServerLock, run_dir


def test_root_keeps_locks_in_a_private_run_dir() -> None:
    require_netns()
    lock = ServerLock("posixmq", f"/ipcgwt{uuid.uuid4().hex[:8]}")
    lock.acquire()
    try:
        assert os.path.dirname(lock.path) == SYSTEM_RUN_DIR
        st = os.lstat(SYSTEM_RUN_DIR)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
        assert stat.S_IMODE(os.stat(lock.path).st_mode) == 0o600
    finally:
        lock.release()
    assert not os.path.exists(lock.path)


def test_symlink_at_the_old_tmp_lock_path_is_not_followed(attacker: LocalUser, tmp_path: Path) -> None:
    """Before: root truncated the symlink's target and wrote its pid into it."""
    name = f"ipcgwt{uuid.uuid4().hex[:8]}"
    target = tmp_path / "precious"
    target.write_text("do not touch\n")
    planted = [f"{tempfile.gettempdir()}/ipcgw-posixmq-{name}.lock"]
    for path in planted:
        r = attacker.run(["ln", "-s", str(target), path])
        assert r.returncode == 0, r.stderr
    server = ServerProcess([f"posixmq:///{name}"], tmp_path)
    try:
        assert target.read_text() == "do not touch\n"
        server.stop_ok()
    finally:
        server.kill()
        for path in planted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    assert target.read_text() == "do not touch\n"


def test_symlink_in_the_run_dir_is_refused(tmp_path: Path) -> None:
    require_netns()
    name = f"/ipcgwt{uuid.uuid4().hex[:8]}"
    target = tmp_path / "precious"
    target.write_text("keep\n")
    lock = ServerLock("posixmq", name)
    run_dir()
    os.symlink(target, lock.path)
    try:
        with pytest.raises((TransportError, OSError)):
            listen(f"posixmq://{name}")
    finally:
        os.unlink(lock.path)
    assert target.read_text() == "keep\n"


@pytest.mark.parametrize("how", ["other-owner", "symlink", "wide-mode"])
def test_a_prepared_private_dir_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           how: str) -> None:
    """A non-root server's fallback /tmp/ipcgw-UID: whoever made it first owns it,
    and one that others may enter is refused too (never repaired)."""
    require_netns()  # root: to fake the owner with chown
    uid = 54321
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = tmp_path / f"ipcgw-{uid}"
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        os.chown(tmp_path / "elsewhere", uid, -1)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir(mode=0o700)
    if how == "wide-mode":
        os.chown(path, uid, -1)
        path.chmod(0o755)
    with pytest.raises(TransportError, match="private directory") as err:
        run_dir()
    assert "\n" not in str(err.value) and f"rm -r {path}" in str(err.value)
    with pytest.raises(TransportError, match="private directory"):
        ServerLock("fifo", "/x").acquire()


def test_fallback_dir_for_other_users_is_made_private(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid())
    if os.getuid() == 0:  # root: fake a user whose uid is root's for the checks
        monkeypatch.setattr(os.path, "isdir", lambda p: p != "/run" and os.path.exists(p))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = run_dir()
    assert path == str(tmp_path / f"ipcgw-{os.getuid()}")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700


def test_lock_is_shared_across_ip_netns_exec(netns: str, tmp_path: Path) -> None:
    """/run/ipcgw is one directory for every network namespace: a server inside a
    namespace holds the name for the whole host."""
    key = f"{0x10000000 + int(uuid.uuid4().hex[:6], 16):#x}"
    server = ServerProcess([f"sysv://{key}"], tmp_path, netns=netns)
    try:
        out = subprocess.run(["ip", "netns", "exec", netns, "ls", SYSTEM_RUN_DIR],
                             capture_output=True, text=True, check=True).stdout.split()
        assert f"ipcgw-sysv-{key}.lock" in out
        with pytest.raises(ConnectError, match="live ipcgw server"):
            listen(f"sysv://{key}")
        code = "import sys; from ipcgw.transports import connect_bytes; connect_bytes(sys.argv[1], 5).close()"
        r = subprocess.run([sys.executable, "-c", code, f"sysv://{key}"], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 0, r.stderr  # a client outside finds the server inside
        server.stop_ok()
    finally:
        server.kill()
