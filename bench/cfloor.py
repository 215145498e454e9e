"""The C floor: compile ``bench/c/<transport>.c`` once per source version and run it.

Why C at all: the ratio of ipcgw to raw Python says what the gateway's layers
cost, but not how far Python is from what the machine can do; the C programs
do the same syscalls with nothing on top. Binaries are cached by a hash of the
sources and compiler, so a repeated run does not recompile. Without a
compiler every C row is skipped with a note, never an error.

Across CPUs the plain echo is not a floor on a VM: a vCPU that idles while it
waits pays a wake-up on the next message, so an echo that busy-waits a few
microseconds before answering can make the round trip *shorter* (measured
here: 45.7 us plain, 34.4 us with 5 us of work). A floor that slower code can
beat is no floor, so cross-CPU round trips are also run with the echo doing
``WORK_US`` of busy work, and the floor is the best ``p50 - work``
(``pick_floor``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ipcgw.transports import TRANSPORTS

from .hist import Histogram
from .queues import QueuePair

__all__ = ["C_TRANSPORTS", "WORK_US", "CFloor", "CRun", "pick_floor"]

SRC = Path(__file__).resolve().parent / "c"
#: The transports with a C echo in bench/c/ (NAME.c); a new transport has none until written.
C_TRANSPORTS = tuple(t for t in TRANSPORTS if (SRC / f"{t}.c").exists())
_CFLAGS = ("-D_GNU_SOURCE", "-O2", "-Wall")  # with _LIBS, part of the cache key
_LIBS = ("-lrt", "-pthread")
#: Busy work (us) the echo adds before each reply when the floor is searched for.
WORK_US = (0, 2, 5, 10, 20)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ipcgw-bench"


def _shm_args(client_cpu: int, server_cpu: int) -> list[str]:
    """SPIN_US for shm.c (it makes a memfd and eventfds: nothing named to clean up)."""
    from . import shmring

    return [str(0 if client_cpu == server_cpu else shmring.SPIN_US)]  # as the raw and ipcgw sides


def pick_floor(p50_by_work: dict[float, float]) -> tuple[float, float]:
    """(floor, work) from {work us: p50 us}: the smallest p50 - work, i.e. the
    fastest round trip the machine allowed, with the added work taken back out."""
    if not p50_by_work:
        raise ValueError("no round trips to take a floor from")
    work = min(p50_by_work, key=lambda w: (p50_by_work[w] - w, w))
    return p50_by_work[work] - work, work


@dataclass
class CRun:
    n: int
    warmup: int
    elapsed: float
    client_cpu: float
    server_cpu: float
    hist: Histogram


class CFloor:
    """Compiled C programs, or the reason there are none."""

    def __init__(self, cache: Path | None = None) -> None:
        self.cache = cache or _cache_dir()
        self.binaries: dict[str, Path] = {}
        self.note = ""

    def build(self) -> str:
        """Compile what is missing; returns a note ('' when all built)."""
        cc = shutil.which(os.environ.get("CC", "cc"))
        if cc is None:
            self.note = "C floor skipped: no C compiler (cc) found"
            return self.note
        sources = sorted(SRC.glob("*.[ch]"))
        digest = hashlib.sha256(" ".join((cc, *_CFLAGS, *_LIBS)).encode())
        for src in sources:
            digest.update(src.name.encode() + src.read_bytes())
        out = self.cache / digest.hexdigest()[:16]
        out.mkdir(parents=True, exist_ok=True)
        failures = []
        for name in C_TRANSPORTS:
            binary = out / f"ipcgw-bench-{name}"
            if not binary.exists():
                tmp = binary.with_suffix(f".tmp{os.getpid()}")
                proc = subprocess.run(
                    [cc, *_CFLAGS, "-o", str(tmp), str(SRC / f"{name}.c"), *_LIBS],
                    capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    failures.append(f"{name}: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                tmp.replace(binary)
            self.binaries[name] = binary
        self.note = f"C floor: compile failed for {'; '.join(failures)}" if failures else ""
        return self.note

    def run(self, transport: str, mode: str, size: int, budget: float, client_cpu: int,
            server_cpu: int, work_us: float = 0) -> CRun:
        """One pp (ping-pong) or tp (throughput) run, the echo adding ``work_us`` of busy
        work per reply (pp); raises RuntimeError on failure."""
        binary = self.binaries.get(transport)
        if binary is None:
            raise RuntimeError(self.note or f"no C program for {transport}")
        with contextlib.ExitStack() as stack:
            addr: list[str] = []
            if transport == "fifo":
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ipcgw-bench-c-"))
                addr = [os.path.join(tmp, "c2s"), os.path.join(tmp, "s2c")]
                for path in addr:
                    os.mkfifo(path, 0o600)
            elif transport in ("sysv", "posixmq"):
                pair = stack.enter_context(QueuePair(transport))
                addr = pair.c_args()
            elif transport == "shm":
                addr = _shm_args(client_cpu, server_cpu)
            cmd = [str(binary), mode, str(size), str(max(1, int(budget * 1000))),
                   str(client_cpu), str(server_cpu), str(int(work_us * 1000)), *addr]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            try:
                out, err = proc.communicate(timeout=budget * 3 + 30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise RuntimeError(f"C {transport} {mode} {size} B timed out") from None
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            if proc.returncode != 0:
                raise RuntimeError(f"C {transport} {mode} failed: {err.strip()[-300:]}")
        data = json.loads(out)
        hist = Histogram()
        for i, c in data["hist"]:
            hist.counts[i] += c
        hist.total = sum(c for _, c in data["hist"])
        if hist.total:
            hist.min, hist.max = data["min"], data["max"]
        return CRun(data["n"], data["warmup"], data["elapsed_ns"] / 1e9,
                    data["client_cpu_ns"] / 1e9, data["server_cpu_ns"] / 1e9, hist)
