"""The gateway a policy runs in, and the reaction time of that policy.

The simulation (or its veth stand-in) reports RSSI through the cell's IPC
transport to an in-process :class:`ipcgw.server.Gateway` whose
:class:`~ipcgw.mptcp.handler.MptcpHandler` drives the *client* namespace's
path manager (scenario 1: the client's ``subflow`` endpoint id 2 is the
WLAN path, and its backup flag moves the download to path 1 via MP_PRIO).
The listener is opened from inside the client namespace, so ``tcp`` and
abstract ``unix`` addresses are where the simulation process can reach them.

Reaction time (per decision) = the moment the kernel confirmed the flag
change (the netlink ACK of SET_FLAGS) - the wall time of the sim time of the
report that triggered it; a poller on a second netlink socket also records
when the change became visible in the endpoint dump (``seen``, ≤ 2 ms poll).
The policy acts through a recording proxy of its PathManager, so any
``module:Class`` policy is measured, not just the RSSI one.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from typing import Any

from ipcgw.messages import Report
from ipcgw.mptcp.events import MptcpEvent
from ipcgw.mptcp.pm import PathManager
from ipcgw.mptcp.policy import Policy, build_policy
from ipcgw.testing import fresh_url

__all__ = ["PolicyServer", "transport_url"]

POLL_S = 0.002


def transport_url(transport: str) -> tuple[str, list[str]]:
    """A fresh address for one cell, and the paths to remove afterwards."""
    url = fresh_url(transport, prefix="ipcgw-exp")
    path = url.split("://", 1)[1]
    return url, [path] if transport in ("fifo", "unix") else []


class _RecordingPM:
    """The policy's PathManager, with its flag changes timestamped."""

    def __init__(self, pm: PathManager, probe: _Probe) -> None:
        self._pm = pm
        self._probe = probe

    def set_endpoint_flags(self, id: int, backup: bool, fullmesh: bool = False) -> None:
        self._pm.set_endpoint_flags(id, backup, fullmesh)
        self._probe.decided(("endpoint", id, backup))

    def set_flags(self, *args: Any, **kwargs: Any) -> None:
        self._pm.set_flags(*args, **kwargs)
        self._probe.decided(("subflow", kwargs.get("backup")))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pm, name)


class _Probe(Policy):
    """Wraps a policy: times reports in and decisions out."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.current: tuple[float, float] | None = None  # (sim time, mono received)
        self.reports: list[tuple[float, float]] = []
        self.decisions: list[dict[str, Any]] = []
        self._local = threading.local()

    def bind(self, pm: PathManager) -> None:
        self.pm = pm
        self.inner.bind(_RecordingPM(pm, self))  # type: ignore[arg-type]

    def dispatch(self, event: MptcpEvent) -> None:
        self.inner.dispatch(event)

    def on_report(self, report: Report) -> None:
        self.report_from(None, report)

    def session_closed(self, session: int) -> None:
        self.inner.session_closed(session)

    def report_from(self, session: int | None, report: Report) -> None:
        received = time.monotonic()
        self.reports.append((report.sim_time, received))
        self._local.report = (report.sim_time, received, report.metrics)
        try:
            self.inner.report_from(session, report)
        finally:
            self._local.report = None

    def decided(self, what: tuple[Any, ...]) -> None:
        now = time.monotonic()
        rep = getattr(self._local, "report", None)
        self.decisions.append({"what": list(what), "acked": now,
                               "sim": rep[0] if rep else None,
                               "received": rep[1] if rep else None,
                               "metrics": rep[2] if rep else None})

    def close(self) -> None:
        self.inner.close()


class PolicyServer:
    """Gateway + MptcpHandler(policy) on ``netns`` for one cell; see the module docstring."""

    def __init__(self, spec: str, args: dict[str, Any], transport: str, netns: str) -> None:
        self.spec, self.args, self.transport, self.netns = spec, args, transport, netns
        self.tag = uuid.uuid4().hex[:12]
        self.url, self._cleanup = transport_url(transport)
        self.probe = _Probe(build_policy(spec, args))
        self.gateway: Any = None
        self.seen: list[tuple[float, int, list[str]]] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> str:
        """Listen; returns the URL the simulation connects to."""
        from ipcgw.mptcp.handler import MptcpHandler
        from ipcgw.netns import run_in_netns
        from ipcgw.server import Gateway

        handler = MptcpHandler(policy=self.probe, netns=self.netns)
        self.gateway = Gateway(handler, name="experiment")
        endpoint = run_in_netns(self.netns, lambda: self.gateway.listen(self.url))
        self.url = str(endpoint)
        self._poller = threading.Thread(target=self._poll, name="flag-poller", daemon=True)
        self._poller.start()
        return self.url

    def _poll(self) -> None:
        with PathManager(self.netns) as pm:
            last: dict[int, list[str]] = {}
            while not self._stop.wait(POLL_S):
                try:
                    eps = pm.endpoints()
                except Exception:  # the namespace is going away
                    return
                now = time.monotonic()
                for ep in eps:
                    names = ep["flag_names"]
                    if ep["id"] in last and last[ep["id"]] != names:
                        self.seen.append((now, ep["id"], names))
                    last[ep["id"]] = names

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway.close()
        for path in self._cleanup:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)

    def reactions(self, sim_to_mono: Any) -> list[dict[str, Any]]:
        """Per decision: reaction (ms) from the sim-time event to the kernel's ACK, the
        IPC part of it (report sent → received), and when the poller saw the change."""
        out = []
        for d in self.probe.decisions:
            if d["sim"] is None:
                continue
            t_event = sim_to_mono(d["sim"])
            if t_event is None:
                continue
            backup = d["what"][-1]
            seen = next((t for t, _, names in self.seen
                         if t >= d["acked"] - POLL_S and ("backup" in names) == backup), None)
            out.append({
                "sim": d["sim"], "what": d["what"],
                "reaction_ms": (d["acked"] - t_event) * 1000,
                "ipc_ms": (d["received"] - t_event) * 1000,
                "seen_ms": None if seen is None else (seen - t_event) * 1000,
            })
        return out

    def ipc_delays_ms(self, sim_to_mono: Any) -> list[float]:
        out = []
        for sim, received in self.probe.reports:
            t = sim_to_mono(sim)
            if t is not None:
                out.append((received - t) * 1000)
        return out
