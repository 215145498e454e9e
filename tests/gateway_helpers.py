"""Real gateway server processes for tests, and snapshots of IPC objects."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

TRANSPORTS = ["fifo", "sysv", "posixmq", "tcp", "unix", "unix-abstract", "shm"]
NETNS_CROSSING = ["fifo", "sysv", "posixmq", "unix", "shm"]


def fresh_url(transport: str, tmp: Path, query: str = "") -> str:
    """A URL no other test uses."""
    tag = uuid.uuid4().hex[:8]
    base = {
        "fifo": f"fifo://{tmp}/gw-{tag}",
        "sysv": f"sysv://{random.randrange(0x10000000, 0x7FFFFFFF):#x}",
        "posixmq": f"posixmq:///ipcgwt{tag}",
        "tcp": "tcp://127.0.0.1:0",
        "unix": f"unix://{tmp}/gw-{tag}.sock",
        "unix-abstract": f"unix:@ipcgwt{tag}",
        "shm": f"shm:///ipcgwt{tag}",
    }[transport]
    return f"{base}?{query}" if query else base


def ipc_objects() -> set[str]:
    """Every SysV queue, POSIX queue and POSIX shm/semaphore name on the host."""
    found: set[str] = set()
    with open("/proc/sysvipc/msg") as f:
        next(f)
        found |= {f"sysv:{line.split()[1]}" for line in f if line.strip()}
    found |= {f"mq:{n}" for n in os.listdir("/dev/mqueue")}
    found |= {f"shm:{n}" for n in os.listdir("/dev/shm")}
    return found


class ServerProcess:
    """``python -m ipcgw serve`` in a child process (optionally inside a netns)."""

    def __init__(self, urls: list[str], tmp: Path, *, netns: str | None = None,
                 extra: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp / f"server-{uuid.uuid4().hex[:6]}.log"
        cmd = [sys.executable, "-m", "ipcgw", "-v", "serve"]
        for url in urls:
            cmd += ["--listen", url]
        extra = extra or []
        if "--handler" not in extra:  # not auto: a transport test must not touch the host's MPTCP
            extra = ["--handler", "base", *extra]
        cmd += extra
        self.netns = netns
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, **(env or {})})
        self.urls = self._read_urls(len(urls))

    def _read_urls(self, n: int, timeout: float = 20.0) -> list[str]:
        assert self.proc.stdout is not None
        urls: list[str] = []
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while len(urls) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                self.kill()
                raise RuntimeError(f"server did not start in {timeout} s: {self.log()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait()
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"listening on "):
                    urls.append(line.decode().removeprefix("listening on "))
        return urls

    @property
    def url(self) -> str:
        return self.urls[0]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._log.close()
        return rc

    def stop_ok(self) -> None:
        """SIGTERM; the server must exit 0 (its log is the failure message)."""
        rc = self.stop()
        assert rc == 0, f"server exited {rc}:\n{self.log_path.read_text(errors='replace')}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            reclaim(getattr(self, "urls", []), self.netns)
        self._log.close()


def reclaim(urls: list[str], netns: str | None = None) -> None:
    """After a kill -9: what the dead server left (FIFOs, sockets, lock files, queues)
    is removed the way a user would, by a server that reclaims it and stops cleanly."""
    named = [u for u in urls if not u.startswith(("tcp:", "unix:@"))]  # those leave no name
    if not named:
        return
    cmd = [sys.executable, "-m", "ipcgw", "serve", "--handler", "base"]
    for url in named:
        cmd += ["--listen", url]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for _ in named:
        if not proc.stdout.readline():
            break
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
