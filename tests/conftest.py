"""Shared test plumbing: root/namespace gating and server processes.

Root-only tests call ``require_netns()``: it skips where namespaces are not
available, but with ``IPCGW_REQUIRE_NETNS=1`` (set by .ci/run) it fails
instead, so CI can never go green by skipping them. ``require_shm_c()`` does
the same for the shm transport's optional C data path (``IPCGW_REQUIRE_SHM_C``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest


def require_netns() -> None:
    """Skip (or fail under IPCGW_REQUIRE_NETNS=1) unless we can make namespaces."""
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root"
    elif shutil.which("ip") is None:
        reason = "needs iproute2 (ip)"
    if reason:
        if os.environ.get("IPCGW_REQUIRE_NETNS") == "1":
            pytest.fail(f"IPCGW_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


def require_shm_c() -> None:
    """Skip (or fail under IPCGW_REQUIRE_SHM_C=1) unless the shm transport's C data
    path was built (it is optional: without a compiler the install goes on)."""
    try:
        import ipcgw.transports._shmring  # noqa: F401
    except ImportError as exc:
        if os.environ.get("IPCGW_REQUIRE_SHM_C") == "1":
            pytest.fail(f"IPCGW_REQUIRE_SHM_C=1 but the C rings are not built: {exc}")
        pytest.skip("the shm C rings are not built (no C compiler at install)")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (loopback up), removed afterwards."""
    require_netns()
    name = unique("ipcgwt")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


class LocalUser:
    """An unprivileged local user made for one test: the attacker of the security tests.

    Its programs run with the system Python (``/usr/bin/python3 -I``, stdlib
    only): the test venv may live under a directory other users cannot enter.
    """

    python = "/usr/bin/python3"

    def __init__(self, name: str, uid: int, gid: int) -> None:
        self.name, self.uid, self.gid = name, uid, gid

    def run(self, argv: list[str], timeout: float = 20.0, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[], text=True,
                              capture_output=True, timeout=timeout, cwd="/", check=False,
                              **kw)  # type: ignore[call-overload]

    def run_python(self, code: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return self.run([self.python, "-I", "-c", code, *args], timeout=timeout)

    def popen_python(self, code: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([self.python, "-I", "-c", code, *args], user=self.uid, group=self.gid,
                                extra_groups=[], text=True, cwd="/", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)


@pytest.fixture
def attacker() -> Iterator[LocalUser]:
    """A fresh unprivileged user (root only), removed with everything it owns afterwards."""
    require_netns()  # root, and CI makes a skip a failure
    if shutil.which("useradd") is None or not os.path.exists(LocalUser.python):
        pytest.fail("the security tests need useradd and /usr/bin/python3")
    name = unique("ipcgwx")
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        import pwd

        entry = pwd.getpwnam(name)
        yield LocalUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["pkill", "-9", "-u", name], check=False)
        subprocess.run(["userdel", "--force", name], check=False, capture_output=True)
