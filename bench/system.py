"""What the machine is, where processes run, and how much CPU they used.

Every figure in the report depends on these: on a 2-vCPU VM a round trip
between two processes on one CPU and on two CPUs differ by 10x, so placement
is pinned explicitly, and the load other users put on the machine is recorded
next to the numbers it disturbed.
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path
from typing import Any

from ipcgw.testing import provenance

__all__ = [
    "PLACEMENTS",
    "client_cpu",
    "ipc_limits",
    "loadavg",
    "machine_info",
    "pin_self",
    "placement_cpus",
    "proc_cpu",
]

#: placement -> (server CPU, client CPU)
PLACEMENTS: dict[str, tuple[int, int]] = {"same": (0, 0), "cross": (0, 1)}

_SYSCTLS = {
    "kernel.msgmax": "/proc/sys/kernel/msgmax",
    "kernel.msgmnb": "/proc/sys/kernel/msgmnb",
    "kernel.msgmni": "/proc/sys/kernel/msgmni",
    "fs.mqueue.msg_max": "/proc/sys/fs/mqueue/msg_max",
    "fs.mqueue.msgsize_max": "/proc/sys/fs/mqueue/msgsize_max",
    "fs.mqueue.queues_max": "/proc/sys/fs/mqueue/queues_max",
    "fs.pipe-max-size": "/proc/sys/fs/pipe-max-size",
    "net.core.rmem_default": "/proc/sys/net/core/rmem_default",
    "net.core.wmem_default": "/proc/sys/net/core/wmem_default",
}


def placement_cpus(placement: str) -> tuple[int, int]:
    """(server CPU, client CPU); ValueError when this machine lacks the CPUs."""
    server, client = PLACEMENTS[placement]
    usable = os.sched_getaffinity(0) if _original_affinity is None else _original_affinity
    if server not in usable or client not in usable:
        raise ValueError(f"placement {placement} needs CPUs {server} and {client}; "
                         f"usable: {sorted(usable)}")
    return server, client


_original_affinity: set[int] | None = None


def pin_self(cpu: int | None) -> None:
    """Pin every thread of this process (the sysv watchdog, zmq's I/O thread
    too), so threads created in an earlier case do not stay on another CPU.
    ``None`` restores the affinity the process started with."""
    global _original_affinity
    if _original_affinity is None:
        _original_affinity = set(os.sched_getaffinity(0))
    cpus = _original_affinity if cpu is None else {cpu}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that just exited
            os.sched_setaffinity(int(tid), cpus)


def client_cpu() -> float:
    """CPU seconds (user + system) of this process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds of another process, all its threads.

    Sums ``/proc/PID/task/*/schedstat`` (nanoseconds) because ``/proc/PID/stat``
    counts in 10 ms ticks, too coarse for a 50 ms quick case; falls back to
    ``stat`` when schedstat is missing. Threads that exit mid-case take their
    time with them: callers wait for a server's session threads to end first.
    """
    total, found = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    if found:
        return total / 1e9
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def ipc_limits() -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, path in _SYSCTLS.items():
        try:
            out[name] = int(Path(path).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    cc = os.environ.get("CC", "cc")
    info = provenance(packages=("msgpack", "pyzmq", "sysv_ipc", "posix_ipc"), tools=(cc,))
    info["cc"] = info.pop(cc)
    info["ipc_limits"] = ipc_limits()
    return info
