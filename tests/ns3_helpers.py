"""Plumbing for the ns3_side tests: a recording server handler and server processes.

``RecordingHandler`` runs inside a real ``python -m ipcgw serve`` process
(``--handler ns3_helpers:RecordingHandler``): it keeps every Report
and answers Commands the tests use to look inside the server:

- ``reports.dump`` -> ``[[sim_time, path_id, metrics, node_id], ...]``
- ``sim.step``     -> ``{"step": n, "sim_time": t, "reports": count}``
- ``events.push``  -> posts ``Event(kind, attrs)`` to the asking session
  after the Result (as MPTCP events reach a client)
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import reclaim

from ipcgw.messages import Command, Event, Message, Report, Result
from ipcgw.server import BaseHandler, Session

ROOT = Path(__file__).resolve().parent.parent
# Seconds the server sleeps before answering sim.step (set in the server's env).
STEP_DELAY = float(os.environ.get("NS3_TEST_STEP_DELAY", "0"))


def require_ns3() -> Any:
    """``ns``, or skip (fail under IPCGW_REQUIRE_NS3=1) when the wheel is missing."""
    try:
        from ns import ns
    except ImportError as exc:
        if os.environ.get("IPCGW_REQUIRE_NS3") == "1":
            pytest.fail(f"IPCGW_REQUIRE_NS3=1 but ns-3 is not importable: {exc}")
        pytest.skip(f"needs the ns3 wheel: {exc}")
    return ns


class RecordingHandler(BaseHandler):
    """Records Reports; answers the test commands listed in the module docstring."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.steps = 0
        self._lock = threading.Lock()

    def on_message(self, session: Session, msg: Message) -> Message | None:
        if isinstance(msg, Report):
            with self._lock:
                self.reports.append(msg)
            return None
        if isinstance(msg, Command) and msg.op == "reports.dump":
            with self._lock:
                rows = [[r.sim_time, r.path_id, r.metrics, r.node_id] for r in self.reports]
            return Result(msg.request_id, True, rows)
        if isinstance(msg, Command) and msg.op == "sim.step":
            time.sleep(STEP_DELAY)
            with self._lock:
                self.steps += 1
                value = {"step": self.steps, "sim_time": msg.args.get("sim_time"),
                         "reports": len(self.reports)}
            return Result(msg.request_id, True, value)
        if isinstance(msg, Command) and msg.op == "events.push":
            session.post(Result(msg.request_id, True, None))
            session.post(Event(str(msg.args.get("kind", "TEST")),
                               dict(msg.args.get("attrs", {})), time.time()))
            return None
        if isinstance(msg, Command) and msg.op == "endpoint.set_flags":
            with self._lock:
                self.reports.append(Report(-1.0, -1, {"set_flags": dict(msg.args)}, -1))
            return Result(msg.request_id, True, None) if msg.request_id else None
        return super().on_message(session, msg)


class Server:
    """``python -m ipcgw serve`` as a child process; ``url`` is what it listens on."""

    def __init__(self, urls: str | list[str], tmp: Path, *,
                 handler: str = "ns3_helpers:RecordingHandler",
                 extra: list[str] | None = None, netns: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        urls = [urls] if isinstance(urls, str) else urls
        self.netns = netns
        self.log_path = tmp / f"server-{uuid.uuid4().hex[:6]}.log"
        cmd = [sys.executable, "-m", "ipcgw", "-v", "serve", "--handler", handler,
               *(extra or [])]
        for url in urls:
            cmd += ["--listen", url]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": path, **(env or {})})
        try:
            self.urls = [self._read_url() for _ in urls]
        except BaseException:
            self.stop()
            raise
        self.url = self.urls[0]

    def _read_url(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"listening on "):
                    return line.decode().removeprefix("listening on ").strip()
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise RuntimeError(f"server did not start in {timeout} s: {self.log()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait()
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            buf += chunk

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig == signal.SIGSTOP:  # kill() returns before the target has stopped
                deadline = time.monotonic() + 5
                while _state(self.proc.pid) not in ("T", "t") and time.monotonic() < deadline:
                    time.sleep(0.001)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT, in case a test froze it), then SIGKILL if needed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode == -signal.SIGKILL:  # a test killed it: remove what it left
            reclaim(getattr(self, "urls", []), self.netns)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dump_reports(url: str) -> list[list[Any]]:
    """What the server recorded, asked over a fresh msgpack session."""
    import ipcgw

    with ipcgw.connect(url, timeout=5.0, name="test-dump") as client:
        return list(client.command("reports.dump", timeout=10.0))


def _state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat (T: stopped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1].decode()
    except (OSError, IndexError):
        return "?"


class ForgetfulHandler(BaseHandler):
    """A handler written as if Pings and Byes did not exist: it records Reports
    and calls anything else an error. The session protocol must not need more."""

    def __init__(self) -> None:
        self.reports = 0

    def on_message(self, session: Session, msg: Message) -> Message | None:
        if isinstance(msg, Report):
            self.reports += 1
            return None
        return Result(getattr(msg, "request_id", 0), False, None, f"what is a {type(msg).__name__}?")
