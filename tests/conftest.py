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
