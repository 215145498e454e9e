"""Path-manager policies: mptcpd-style hooks in Python, plus simulation reports.

A policy sees every MPTCP event of the server's namespace through the hooks
mptcpd's plugins have (``new_connection``, ``connection_established``, ...)
and every ``Report`` from the simulation through :meth:`Policy.on_report`;
it acts through ``self.pm`` (a :class:`~ipcgw.mptcp.pm.PathManager`), bound
by the handler before the first call. Hooks run on the event thread or the
reporting session's thread, so a policy keeps its own state under a lock if
it uses both. Load one with ``ipcgw serve --policy 'module:Class?name=value&...'``
(:func:`build_policy` checks every name and value against the constructor).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import logging
import math
import threading
import time
import types
import typing
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote_plus

from ipcgw.messages import Report
from ipcgw.mptcp.events import MptcpEvent
from ipcgw.mptcp.genl import KernelError
from ipcgw.mptcp.pm import PathManager

__all__ = ["Policy", "RssiPolicy", "Station", "build_policy", "load_policy", "policy_class"]

log = logging.getLogger(__name__)

_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}
Key = tuple[int | None, int, int]  # session, node, path


@dataclass
class Station:
    """What RssiPolicy keeps per (session, node, path)."""

    filtered: float | None = None
    last_sim: float | None = None
    link_up: bool | None = None
    backup: bool | None = None


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

    def report_from(self, session: int | None, report: Report) -> None:
        """A report with the id of the session it came on (None: unknown). Handlers
        call this; the default forgets the session and calls :meth:`on_report`."""
        self.on_report(report)

    def session_closed(self, session: int) -> None:
        """A reporting session ended: drop what was kept for it."""

    def close(self) -> None:
        """The server is shutting down."""


class RssiPolicy(Policy):
    """The seed's policy: low-pass filtered RSSI drives each station's WLAN endpoint.

    Filter: ``rssi = w * rssi + (1 - w) * sample`` where ``w`` is ``alpha``
    (0.85) per report, or, with ``tau_ms`` > 0, ``exp(-dt / tau_ms)`` for the
    sim time ``dt`` since that station's previous report: a time constant, so
    the filter is as strong at 10 reports/s as at 1000. When the filtered
    value drops below ``threshold_dbm`` the station's endpoint becomes backup
    so traffic moves to the other path; above ``threshold_dbm + hysteresis_db``
    its flags are cleared. A ``link_up`` False report (the station lost its
    AP) makes the endpoint backup at once (``on_link_down``): a station that
    went deaf sends no more RSSI, so waiting for the filter would never end.

    State is kept per (session, node, path), so two stations or two
    simulations never share a filter. ``endpoints`` maps a node id to the
    endpoint id it acts on (``{3: 2, 5: 4}``, or ``endpoints=3:2,5:4`` in a
    spec); nodes not in it use ``wlan_id`` (2). Only changes are sent to the
    kernel. ``path_id`` restricts which reports count (None: any report
    carrying ``metric``). Every decision is in :attr:`decisions`, timed on
    CLOCK_MONOTONIC (a report's ``host_mono`` metric, the decision, the ACK).
    """

    ALIASES: ClassVar[dict[str, str]] = {"threshold": "threshold_dbm",
                                         "hysteresis": "hysteresis_db", "tau": "tau_ms"}

    def __init__(
        self,
        alpha: float = 0.85,
        threshold_dbm: float = -80.0,
        hysteresis_db: float = 0.0,
        wlan_id: int = 2,
        lte_id: int = 1,
        metric: str = "rssi_dbm",
        path_id: int | None = None,
        tau_ms: float = 0.0,
        endpoints: dict[int, int] | None = None,
        on_link_down: bool = True,
    ) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if tau_ms < 0:
            raise ValueError(f"tau_ms must be >= 0, got {tau_ms}")
        if hysteresis_db < 0:
            raise ValueError(f"hysteresis_db must be >= 0, got {hysteresis_db}")
        self.alpha = alpha
        self.threshold_dbm = threshold_dbm
        self.hysteresis_db = hysteresis_db
        self.wlan_id = wlan_id
        self.lte_id = lte_id
        self.metric = metric
        self.path_id = path_id
        self.tau_ms = tau_ms
        self.endpoints = dict(endpoints or {})
        self.on_link_down = on_link_down
        self.stations: dict[Key, Station] = {}
        self.told: dict[int, bool] = {}  # endpoint id -> backup flag we last set
        self.decisions: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.filtered: float | None = None  # the last station's, for logs and tests
        self.backup: bool | None = None  # what we last told the kernel (any endpoint)
        self._lock = threading.Lock()

    def endpoint_of(self, node_id: int) -> int:
        return self.endpoints.get(node_id, self.wlan_id)

    def on_report(self, report: Report) -> None:
        self.report_from(None, report)

    def report_from(self, session: int | None, report: Report) -> None:
        if self.path_id is not None and report.path_id != self.path_id:
            return
        value = report.metrics.get(self.metric)
        link = report.metrics.get("link_up")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric and not isinstance(link, bool):
            return
        key = (session, report.node_id, report.path_id)
        with self._lock:
            st = self.stations.setdefault(key, Station())
            want: bool | None = None
            why = ""
            if isinstance(link, bool):
                st.link_up = link
                if not link:
                    st.filtered = None  # a new association starts a new filter
                    if self.on_link_down:
                        want, why = True, "link down"
            if numeric and want is None:
                st.filtered = self._fold(st, float(value), report.sim_time)  # type: ignore[arg-type]
                self.filtered = st.filtered
                want, why = self._decide(st.filtered), "rssi"
            if want is None:
                return
            self._act(key, st, want, why, report)

    def _fold(self, st: Station, sample: float, sim: float) -> float:
        prev, last = st.filtered, st.last_sim
        st.last_sim = sim
        if prev is None:
            return sample
        if self.tau_ms > 0:
            w = math.exp(-max(sim - (last if last is not None else sim), 0.0) * 1000 / self.tau_ms)
        else:
            w = self.alpha
        return w * prev + (1 - w) * sample

    def _act(self, key: Key, st: Station, want: bool, why: str, report: Report) -> None:
        ep = self.endpoint_of(key[1])
        if self.told.get(ep) == want:
            st.backup = want
            return
        if self.pm is None:
            log.warning("RssiPolicy has no path manager bound; ignoring")
            return
        decided = time.monotonic()
        try:
            self.pm.set_endpoint_flags(ep, backup=want)
        except KernelError as exc:
            log.warning("RssiPolicy: endpoint %d backup=%s refused: %s", ep, want, exc.message)
            return
        acked = time.monotonic()
        self.told[ep] = st.backup = self.backup = want
        mono = report.metrics.get("host_mono")
        rec = {"session": key[0], "node": key[1], "path": key[2], "endpoint": ep,
               "backup": want, "why": why, "filtered_dbm": st.filtered,
               "report_sim": report.sim_time, "report_value": report.metrics.get(self.metric),
               "report_mono": mono if isinstance(mono, (int, float)) else None,
               "decided_mono": decided, "acked_mono": acked}
        self.decisions.append(rec)
        log.info("RssiPolicy decision %s", json.dumps(rec))

    def _decide(self, rssi: float) -> bool | None:
        """True: make backup; False: clear; None: inside the hysteresis band."""
        if rssi < self.threshold_dbm:
            return True
        if rssi > self.threshold_dbm + self.hysteresis_db:
            return False
        return None

    def session_closed(self, session: int) -> None:
        with self._lock:
            for key in [k for k in self.stations if k[0] == session]:
                del self.stations[key]


def policy_class(spec: str) -> type[Policy]:
    """The class a ``module:Class[?...]`` spec names (ValueError if there is none)."""
    module, name, _ = _split_spec(spec.strip())
    return _policy_class(module, name)


def _split_spec(spec: str) -> tuple[str, str, str]:
    target, _, query = spec.partition("?")
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"policy must be module:Class[?name=value&...], got {spec!r}")
    return module, name, query


def load_policy(spec: str, **kwargs: Any) -> Policy:
    """``"module:Class[?k=v&...]"`` -> an instance (kwargs go to the constructor too),
    validated like :func:`build_policy`."""
    return build_policy(spec, kwargs)


def _policy_class(module: str, name: str) -> type[Policy]:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"policy module {module!r} cannot be imported: {exc}") from None
    cls = getattr(mod, name, None)
    if cls is None:
        close = difflib.get_close_matches(name, [n for n in dir(mod) if not n.startswith("_")], 1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"{module} has no {name}{hint}")
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise ValueError(f"{module}:{name} is not a Policy subclass")
    return cls


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(cls: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` (text from a spec, or a TOML value) as the parameter's annotated type."""
    bad = ValueError(f"{cls}: {name}={value!r} is not {_type_name(hint)}")
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if none and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(cls, name, value, arg)
            except ValueError:
                continue
        raise bad
    if origin is dict:
        kt, vt = args or (str, Any)
        items: list[tuple[Any, Any]]
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, str):
            items = []
            for part in filter(None, value.split(",")):
                k, sep, v = part.partition(":")
                if not sep:
                    raise ValueError(f"{cls}: {name} wants key:value,key:value, got {value!r}")
                items.append((k, v))
        else:
            raise bad
        return {_convert(cls, name, k, kt): _convert(cls, name, v, vt) for k, v in items}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise bad
    if hint in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int) or (hint is float and isinstance(value, float)):
            return hint(value)
        if isinstance(value, str):
            try:
                out = hint(value)
            except ValueError:
                raise bad from None
            if hint is float and not math.isfinite(out):
                raise bad
            return out
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    return value  # another type: the constructor judges


def build_policy(spec: str, args: Mapping[str, Any] | None = None) -> Policy:
    """``"module:Class?name=value&..."`` (plus ``args``, e.g. from a TOML table) -> an instance.

    Every name is checked against the constructor's signature (unknown ones
    refused with a did-you-mean; a class may map short names in ``ALIASES``)
    and every value converted to the parameter's annotated type, so a typo
    fails at start-up in one line naming the parameter, not as a silently
    default threshold. Raises ValueError.
    """
    module, name, query = _split_spec(spec.strip())
    cls = _policy_class(module, name)
    given: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"{name}: bad parameter {part!r} (use name=value&name=value)")
        key, value = unquote_plus(key), unquote_plus(value)
        if key in given:
            raise ValueError(f"{name}: {key} given twice")
        given[key] = value
    for key, value in (args or {}).items():
        if key in given:
            raise ValueError(f"{name}: {key} given twice")
        given[key] = value
    sig = inspect.signature(cls)
    params = {p.name: p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: judge by defaults only
        hints = {}
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    kwargs: dict[str, Any] = {}
    for key, value in given.items():
        real = aliases.get(key, key)
        if real not in params:
            if takes_any:
                kwargs[real] = value
                continue
            close = difflib.get_close_matches(key, [*params, *aliases], 1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"{name} has no parameter {key!r}{hint} "
                             f"(parameters: {', '.join(params) or 'none'})")
        if real in kwargs:
            raise ValueError(f"{name}: {real} given twice (as {key})")
        p = params[real]
        hint = hints.get(real, type(p.default) if p.default not in (p.empty, None) else Any)
        kwargs[real] = _convert(name, real, value, hint)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None
