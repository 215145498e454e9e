"""Path-manager policies: mptcpd-style hooks in Python, plus simulation reports.

A policy sees every MPTCP event of the server's namespace through the hooks
mptcpd's plugins have (``new_connection``, ``connection_established``, ...)
and every ``Report`` from the simulation through :meth:`Policy.on_report`;
it acts through ``self.pm`` (a :class:`~ipcgw.mptcp.pm.PathManager`), bound
by the handler before the first call. Hooks run on the event thread or the
reporting session's thread, so a policy keeps its own state under a lock if
it uses both. Load one with ``ipcgw serve --policy module:Class``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from ipcgw.messages import Report
from ipcgw.mptcp.events import MptcpEvent
from ipcgw.mptcp.genl import KernelError
from ipcgw.mptcp.pm import PathManager

__all__ = ["Policy", "RssiPolicy", "load_policy"]

log = logging.getLogger(__name__)

_HOOKS = {
    "CREATED": "new_connection",
    "ESTABLISHED": "connection_established",
    "CLOSED": "connection_closed",
    "ANNOUNCED": "new_address",
    "REMOVED": "address_removed",
    "SUB_ESTABLISHED": "new_subflow",
    "SUB_CLOSED": "subflow_closed",
    "SUB_PRIORITY": "subflow_priority",
    "LISTENER_CREATED": "listener_created",
    "LISTENER_CLOSED": "listener_closed",
}


class Policy:
    """Base policy: every hook does nothing. Override the ones you need.

    Each hook gets the event's attributes (token, addresses, ids, ...) as a dict.
    """

    pm: PathManager | None = None

    def bind(self, pm: PathManager) -> None:
        """Called once by the handler with the namespace's path manager."""
        self.pm = pm

    def dispatch(self, event: MptcpEvent) -> None:
        """Route an event to its hook (unknown kinds are ignored)."""
        hook = _HOOKS.get(event.kind)
        if hook is not None:
            getattr(self, hook)(event.attrs)

    def new_connection(self, attrs: dict[str, Any]) -> None: ...
    def connection_established(self, attrs: dict[str, Any]) -> None: ...
    def connection_closed(self, attrs: dict[str, Any]) -> None: ...
    def new_address(self, attrs: dict[str, Any]) -> None: ...
    def address_removed(self, attrs: dict[str, Any]) -> None: ...
    def new_subflow(self, attrs: dict[str, Any]) -> None: ...
    def subflow_closed(self, attrs: dict[str, Any]) -> None: ...
    def subflow_priority(self, attrs: dict[str, Any]) -> None: ...
    def listener_created(self, attrs: dict[str, Any]) -> None: ...
    def listener_closed(self, attrs: dict[str, Any]) -> None: ...

    def on_report(self, report: Report) -> None:
        """A simulation report (rssi_dbm, snr_db, rtt_ms, loss, link_up, ...)."""

    def close(self) -> None:
        """The server is shutting down."""


class RssiPolicy(Policy):
    """The seed's policy: low-pass filtered RSSI drives the WLAN endpoint's backup flag.

    ``rssi = alpha * rssi + (1 - alpha) * sample`` (alpha 0.85); when the
    filtered value drops below ``threshold_dbm`` the WLAN endpoint
    (``wlan_id`` 2) becomes backup so traffic moves to LTE (``lte_id`` 1); when
    it rises above ``threshold_dbm + hysteresis_db`` its flags are cleared.
    Only changes are sent to the kernel. ``path_id`` restricts which reports
    count (None: any report carrying ``metric``).
    """

    def __init__(
        self,
        alpha: float = 0.85,
        threshold_dbm: float = -80.0,
        hysteresis_db: float = 0.0,
        wlan_id: int = 2,
        lte_id: int = 1,
        metric: str = "rssi_dbm",
        path_id: int | None = None,
    ) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError("alpha must be in [0, 1)")
        self.alpha = alpha
        self.threshold_dbm = threshold_dbm
        self.hysteresis_db = hysteresis_db
        self.wlan_id = wlan_id
        self.lte_id = lte_id
        self.metric = metric
        self.path_id = path_id
        self.filtered: float | None = None
        self.backup: bool | None = None  # what we last told the kernel
        self._lock = threading.Lock()

    def on_report(self, report: Report) -> None:
        value = report.metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        if self.path_id is not None and report.path_id != self.path_id:
            return
        with self._lock:
            if self.filtered is None:
                self.filtered = float(value)
            else:
                self.filtered = self.alpha * self.filtered + (1 - self.alpha) * float(value)
            want = self._decide(self.filtered)
            if want is None or want == self.backup:
                return
            if self.pm is None:
                log.warning("RssiPolicy has no path manager bound; ignoring")
                return
            try:
                self.pm.set_endpoint_flags(self.wlan_id, backup=want)
            except KernelError as exc:
                log.warning("RssiPolicy: endpoint %d backup=%s refused: %s",
                            self.wlan_id, want, exc.message)
                return
            self.backup = want
            log.info("RssiPolicy: rssi %.1f dBm -> WLAN endpoint %d %s", self.filtered,
                     self.wlan_id, "backup" if want else "flags cleared")

    def _decide(self, rssi: float) -> bool | None:
        """True: make backup; False: clear; None: inside the hysteresis band."""
        if rssi < self.threshold_dbm:
            return True
        if rssi > self.threshold_dbm + self.hysteresis_db:
            return False
        return None


def load_policy(spec: str, **kwargs: Any) -> Policy:
    """``"module:Class"`` -> an instance (kwargs go to the constructor)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"policy must be module:Class, got {spec!r}")
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None:
        raise ValueError(f"{module} has no {name}")
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise ValueError(f"{spec} is not a Policy subclass")
    return cls(**kwargs)
