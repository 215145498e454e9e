"""``ServerProcess``: the one way to run ``ipcgw serve`` in a child process;
``fresh_url``: the one way to name a server no other one on this host uses;
``provenance``: the one record of what produced a set of numbers.

The demo, the benchmarks, the ns-3 side's experiments and the tests all need
the same thing: start a real server (optionally inside a network namespace),
learn the URLs it actually listens on from its "listening on URL" lines (a
TCP port 0 becomes a real port), keep its log, and stop it so that it cleans
up — or kill it and let a fresh server reclaim what it left. Written once here.
"""

from __future__ import annotations

import datetime
import os
import platform
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ipcgw.errors import ServerStartError

__all__ = ["ServerProcess", "fresh_url", "provenance", "reclaim"]

LISTENING = b"listening on "


def fresh_url(transport: str, folder: str | os.PathLike[str] | None = None, query: str = "",
              prefix: str = "ipcgw") -> str:
    """A URL for ``transport`` whose every name carries a random tag: tests, benches and
    experiments run side by side on one host without meeting. ``folder`` holds the
    path-named objects (fifo, unix; default: the temp dir); ``unix-abstract`` is the
    abstract-socket variant of ``unix``; TCP gets port 0 (read the real one back from
    the server). A new transport adds its line here."""
    tag = secrets.token_hex(5)
    where = os.fspath(folder) if folder is not None else tempfile.gettempdir()
    names = {
        "fifo": f"fifo://{where}/{prefix}-{tag}",
        "unix": f"unix://{where}/{prefix}-{tag}.sock",
        "unix-abstract": f"unix:@{prefix}{tag}",
        "sysv": f"sysv://{0x10000000 + secrets.randbelow(0x6FFFFFFF):#x}",
        "posixmq": f"posixmq:///{prefix}{tag}",
        "shm": f"shm:///{prefix}{tag}",
        "tcp": "tcp://127.0.0.1:0",
    }
    try:
        base = names[transport]
    except KeyError:
        raise ValueError(f"no fresh URL for transport {transport!r} (known: {', '.join(names)})") from None
    return f"{base}?{query}" if query else base


class ServerProcess:
    """``python -m ipcgw serve --listen URL ...`` as a child; ``urls`` as bound.

    ``extra`` is appended to the command line (``--handler``, ``--policy`` ...);
    the handler defaults to ``base``, so nothing started here touches the
    host's MPTCP endpoints unless asked. Use as a context manager, or call
    ``stop()`` (SIGTERM: the server removes every OS object) or ``kill()``.
    """

    def __init__(self, urls: Sequence[str], *, log_dir: str | Path | None = None,
                 netns: str | None = None, extra: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 verbose: bool = True, start_timeout: float = 20.0) -> None:
        self.netns = netns
        self.requested = list(urls)
        extra = list(extra)
        if "--handler" not in extra:
            extra = ["--handler", "base", *extra]
        # -P: a bench.py or ipcgw.py in the working directory must not shadow ours
        cmd = [sys.executable, "-P", "-m", "ipcgw", *(["-v"] if verbose else []), "serve", *extra]
        for url in urls:
            cmd += ["--listen", url]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        fd, path = tempfile.mkstemp(prefix="ipcgw-server-", suffix=".log", dir=log_dir)
        self.log_path = Path(path)
        self._log = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, cwd=cwd,
                                     env={**os.environ, **(env or {})})
        self.urls: list[str] = []
        try:
            self.urls = self._read_urls(len(self.requested), start_timeout)
        except BaseException:
            self.kill()
            raise

    # ------------------------------------------------------------ start

    def _read_urls(self, n: int, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        urls: list[str] = []
        buf = b""
        while len(urls) < n:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise ServerStartError(f"ipcgw serve did not start in {timeout} s: {self.log()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait()
                raise ServerStartError(f"ipcgw serve exited {self.proc.returncode}: {self.log()}")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(LISTENING):
                    urls.append(line[len(LISTENING):].decode().strip())
        return urls

    # ------------------------------------------------------------ use

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Send ``sig``; for SIGSTOP, return once the server really is stopped."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            deadline = time.monotonic() + 5
            while _state(self.proc.pid) not in ("T", "t") and time.monotonic() < deadline:
                time.sleep(0.001)

    # ------------------------------------------------------------ stop

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (after SIGCONT, in case it was frozen) and wait; its exit code.
        A server that does not exit in time is killed and what it left reclaimed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        elif self.proc.returncode == -signal.SIGKILL:  # someone killed it: clean up after it
            reclaim(self.urls, self.netns)
        self._close_files()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, then remove what the dead server left (see :func:`reclaim`)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            reclaim(self.urls, self.netns)
        self._close_files()

    def _close_files(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def reclaim(urls: Sequence[str], netns: str | None = None) -> None:
    """After a kill -9: remove what the dead server left (FIFOs, sockets, lock files,
    queues) the way a user would, with a server that reclaims them and stops cleanly."""
    named = [u for u in urls if not u.startswith(("tcp:", "unix:@"))]  # those leave no name
    if not named:
        return
    cmd = [sys.executable, "-P", "-m", "ipcgw", "serve", "--handler", "base"]
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


def _state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat (T: stopped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1].decode()
    except (OSError, IndexError):
        return "?"


def provenance(packages: Iterable[str] = (), tools: Iterable[str] = ()) -> dict[str, Any]:
    """What produced the numbers — machine, kernel, interpreter, the versions of
    ``packages`` (None: not installed), the first line of each tool's ``--version``, and
    the commit (``-dirty`` when the measured code has uncommitted changes, because then
    the commit is a lie). The benchmark, the handover run and the experiment matrix all
    write this one record, so their reports can be compared field by field."""
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "loadavg_start": list(os.getloadavg()),
        "ipcgw_commit": _git_commit(),
    }
    for pkg in ("ipcgw", *packages):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    for tool in tools:
        out[tool] = _tool_version(tool)
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        if not commit:
            return None
        # the measured code, not the results being written (bench/results)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "ipcgw", "ns3_side", "bench",
                                ":(exclude)bench/results"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return None


def _tool_version(tool: str) -> str | None:
    try:
        proc = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (proc.stdout or proc.stderr).splitlines()
    return lines[0].strip() if lines else None
