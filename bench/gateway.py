"""The real gateway under test: ``python -m ipcgw serve`` in its own process
(pinned to the server CPU, optionally in a network namespace), and the
public client API (``ipcgw.connect``, ``Client.ping``, ``Client.send``).

Nothing here reaches into ipcgw's internals: what users call is what is timed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["GATEWAY_TRANSPORTS", "SYSCALL_TRANSPORTS", "GatewayServer", "Netns", "available_transports",
           "fresh_url"]

GATEWAY_TRANSPORTS = ("fifo", "sysv", "posixmq", "tcp", "unix", "shm")
#: The transports that wait in a syscall (everything but shm): what shm is measured against.
SYSCALL_TRANSPORTS = ("fifo", "sysv", "posixmq", "tcp", "unix")
#: Transports whose server can sit in another network namespace than the client.
CROSSES_NETNS = ("fifo", "sysv", "posixmq", "unix", "shm")
_ROOT = str(Path(__file__).resolve().parent.parent)


def available_transports() -> tuple[list[str], list[str]]:
    """(transports that import, notes on the ones that do not: shm is optional)."""
    ok, notes = [], []
    from ipcgw.transports import TRANSPORTS

    for name in GATEWAY_TRANSPORTS:
        target = TRANSPORTS.get(name)
        if target is None:
            notes.append(f"{name}: not registered in ipcgw.transports")
            continue
        module, _, cls = target.partition(":")
        try:
            getattr(importlib.import_module(module), cls)
        except Exception as exc:
            notes.append(f"{name}: skipped, {module} does not import ({type(exc).__name__}: {exc})")
            continue
        ok.append(name)
    return ok, notes


def fresh_url(transport: str, framing: str, tmp: str) -> str:
    """An address no other server uses (tests and other benches run beside us)."""
    tag = uuid.uuid4().hex[:8]
    base = {
        "fifo": f"fifo://{tmp}/gw-{tag}",
        "sysv": f"sysv://{random.randrange(0x10000000, 0x7FFFFFFF):#x}",
        "posixmq": f"posixmq:///ipcgwb{tag}",
        "tcp": "tcp://127.0.0.1:0",
        "unix": f"unix://{tmp}/gw-{tag}.sock",
        "shm": f"shm:///ipcgwb{tag}",
    }[transport]
    return f"{base}?framing={framing}"


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


class GatewayServer:
    """One ``ipcgw serve --listen URL`` process; ``url`` is what it printed."""

    def __init__(self, url: str, cpu: int, netns: str | None = None, log_dir: str | None = None,
                 send_timeout: float = 60.0) -> None:
        self.requested = url
        self.cpu = cpu
        cmd = [sys.executable, "-P", "-m", "ipcgw", "serve", "--listen", url,
               "--handler", "bench.handler:BenchHandler", "--send-timeout", str(send_timeout)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]  # execs: the pid stays the server's
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        fd, self.log_path = tempfile.mkstemp(prefix="ipcgw-bench-server-", suffix=".log",
                                             dir=log_dir)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=fd, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        os.close(fd)
        try:
            self.url = self._read_url()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _read_url(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise RuntimeError(f"server did not start in {timeout:.0f} s: {self.log()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait()
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            buf += chunk
            for line in buf.split(b"\n")[:-1]:
                if line.startswith(b"listening on "):
                    return line.decode().removeprefix("listening on ").strip()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server removes its FIFOs, queues, socket files), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)
