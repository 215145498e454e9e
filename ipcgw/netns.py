"""Open sockets inside a named network namespace without forking.

A network namespace is a property of the calling *thread* in Linux, and a
socket keeps the namespace it was created in for its whole life. So a short
helper thread enters the namespace with ``setns(2)``, creates the socket and
exits; the caller's threads never change namespace. This is cheaper than
pyroute2's ``netns.create_socket`` (which forks a child and passes the fd over
a Unix socket) and safe in a threaded server. Python 3.11 has no ``os.setns``,
hence ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["NETNS_RUN_DIR", "netns_path", "run_in_netns", "setns", "socket_in_netns"]

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def netns_path(name: str) -> str:
    """The bind-mount of an ``ip netns`` namespace (a path is passed through)."""
    return name if "/" in name else os.path.join(NETNS_RUN_DIR, name)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace of ``fd`` (the whole
    process, if it has only this thread: what a child does before anything else)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(netns: str | None, func: Callable[[], T]) -> T:
    """Call ``func`` in a thread that lives in ``netns`` (here when None); return its value."""
    if netns is None:
        return func()
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            setns(fd)
            box["value"] = func()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    try:
        thread = threading.Thread(target=worker, name=f"netns:{netns}", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def socket_in_netns(
    netns: str | None, family: int, type: int, proto: int = 0
) -> socket.socket:
    """A socket created in ``netns`` (None: the caller's namespace)."""
    return run_in_netns(netns, lambda: socket.socket(family, type | socket.SOCK_CLOEXEC, proto))
