"""The real gateway under test: ``python -m ipcgw serve`` in its own process
(pinned to the server CPU, optionally in a network namespace), and the
public client API (``ipcgw.connect``, ``Client.ping``, ``Client.send``).

Nothing here reaches into ipcgw's internals: what users call is what is timed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

from ipcgw.testing import ServerProcess
from ipcgw.testing import fresh_url as _fresh_url
from ipcgw.transports import TRANSPORTS, get_transport

__all__ = ["GATEWAY_TRANSPORTS", "SYSCALL_TRANSPORTS", "BenchServer", "Netns", "available_transports",
           "crosses_netns", "fresh_url", "pin"]

GATEWAY_TRANSPORTS = tuple(TRANSPORTS)
#: The transports that wait in a syscall (everything but shm, which spins on its ring):
#: what shm is measured against.
SYSCALL_TRANSPORTS = tuple(t for t in TRANSPORTS if t != "shm")


def crosses_netns(name: str) -> bool:
    """Whether a server of this transport can sit in another network namespace than its client."""
    return get_transport(name).crosses_netns


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu``; threads it starts later inherit that."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {cpu})


def available_transports() -> tuple[list[str], list[str]]:
    """(transports that import, notes on the ones that do not: shm is optional)."""
    ok, notes = [], []
    for name in GATEWAY_TRANSPORTS:
        try:
            get_transport(name)
        except Exception as exc:
            module = TRANSPORTS[name].partition(":")[0]
            notes.append(f"{name}: skipped, {module} does not import ({type(exc).__name__}: {exc})")
            continue
        ok.append(name)
    return ok, notes


def fresh_url(transport: str, framing: str, tmp: str) -> str:
    """An address no other server uses (tests and other benches run beside us)."""
    return _fresh_url(transport, tmp, f"framing={framing}", prefix="ipcgwb")


class Netns:
    """A throw-away network namespace (loopback up) for ``--netns``."""

    def __init__(self) -> None:
        self.name = f"ipcgwbench{os.getpid()}"

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True,
                           capture_output=True)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


class BenchServer(ServerProcess):
    """One ``ipcgw serve --listen URL --handler ipcgw_bench.handler:BenchHandler``, pinned to ``cpu``."""

    def __init__(self, url: str, cpu: int, netns: str | None = None, log_dir: str | None = None,
                 send_timeout: float = 60.0, handler: str = "ipcgw_bench.handler:BenchHandler") -> None:
        self.cpu = cpu
        try:
            super().__init__([url], log_dir=log_dir, netns=netns, verbose=False,
                             extra=["--handler", handler, "--send-timeout", str(send_timeout)])
            pin(self.pid, cpu)
        except BaseException:
            if hasattr(self, "proc"):
                self.kill()
            if hasattr(self, "log_path"):  # the error carries the log; leave no file behind
                with contextlib.suppress(OSError):
                    os.unlink(self.log_path)
            raise

    def log(self) -> str:
        try:
            return super().log()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the server removes its FIFOs, queues, socket files); a hung one is killed
        (and what it left reclaimed) without raising: benches stop servers in ``finally``."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            super().stop(timeout)
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)
        return self.proc.returncode
