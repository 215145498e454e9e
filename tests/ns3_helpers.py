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
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ipcgw import testing
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


class Server(testing.ServerProcess):
    """``ipcgw serve`` with a handler from this folder (``ns3_helpers:RecordingHandler``)."""

    def __init__(self, urls: str | list[str], tmp: Path, *,
                 handler: str = "ns3_helpers:RecordingHandler",
                 extra: list[str] | None = None, netns: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        urls = [urls] if isinstance(urls, str) else urls
        path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
        super().__init__(urls, log_dir=tmp, netns=netns, extra=["--handler", handler, *(extra or [])],
                         env={"PYTHONPATH": path, **(env or {})}, cwd=ROOT)

    def stop(self, timeout: float = 10.0) -> int:
        """As ServerProcess.stop, but a server that would not stop is killed, not an error."""
        try:
            return super().stop(timeout)
        except subprocess.TimeoutExpired:
            return self.proc.returncode


def dump_reports(url: str) -> list[list[Any]]:
    """What the server recorded, asked over a fresh msgpack session."""
    import ipcgw

    with ipcgw.connect(url, timeout=5.0, name="test-dump") as client:
        return list(client.command("reports.dump", timeout=10.0))



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
