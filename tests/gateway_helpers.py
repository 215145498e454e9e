"""Real gateway server processes for tests, snapshots of IPC objects, and a threaded accept."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ipcgw import testing
from ipcgw.testing import fresh_url as _fresh_url
from ipcgw.testing import reclaim
from ipcgw.transports import Connection, Listener

TRANSPORTS = ["fifo", "sysv", "posixmq", "tcp", "unix", "unix-abstract", "shm"]
NETNS_CROSSING = ["fifo", "sysv", "posixmq", "unix", "shm"]


def fresh_url(transport: str, tmp: Path, query: str = "") -> str:
    """A URL no other test uses."""
    return _fresh_url(transport, tmp, query, prefix="ipcgwt")


def ipc_objects() -> set[str]:
    """Every SysV queue, POSIX queue and POSIX shm/semaphore name on the host."""
    found: set[str] = set()
    with open("/proc/sysvipc/msg") as f:
        next(f)
        found |= {f"sysv:{line.split()[1]}" for line in f if line.strip()}
    found |= {f"mq:{n}" for n in os.listdir("/dev/mqueue")}
    found |= {f"shm:{n}" for n in os.listdir("/dev/shm")}
    return found


class ServerProcess(testing.ServerProcess):
    """``ipcgw.testing.ServerProcess`` with its log in the test's tmp directory."""

    def __init__(self, urls: list[str], tmp: Path, *, netns: str | None = None,
                 extra: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(urls, log_dir=tmp, netns=netns, extra=extra or [], env=env)

    def stop_ok(self) -> None:
        """SIGTERM; the server must exit 0 (its log is the failure message)."""
        rc = self.stop()
        assert rc == 0, f"server exited {rc}:\n{self.log_path.read_text(errors='replace')}"


__all__ = ["NETNS_CROSSING", "TRANSPORTS", "ServerProcess", "accept_in_thread", "fresh_url", "ipc_objects",
           "reclaim"]


def accept_in_thread(lst: Listener, into: list[Connection | BaseException]) -> threading.Thread:
    """``lst.accept()`` in a daemon thread; the connection (or what it raised) lands in ``into``."""
    def run() -> None:
        try:
            into.append(lst.accept())
        except BaseException as exc:
            into.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
