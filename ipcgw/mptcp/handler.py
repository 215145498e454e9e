"""The gateway handler that drives the kernel's MPTCP path manager.

``Command`` ops (args in brackets, ``?`` optional):

=====================  =====================================================
endpoint.add           addr, id?, flags? ("subflow"), port?, ifindex?, dev?
endpoint.delete        id                      (sspi DEL)
endpoint.flush         —
endpoint.show          id?
endpoint.set_flags     id, backup              (sspi BACKUP_FLAG_ON / CLEAR_FLAGS)
limits.get / .set      subflows?, add_addr_accepted?
pm.announce            token, addr, id, port?, ifindex?, dev?
pm.remove              token, id
pm.subflow_create      token, local_addr, remote_addr, remote_port,
                       local_id?, local_port?, backup?, ifindex?, dev?
pm.subflow_destroy     token, local_addr, local_port, remote_addr, remote_port
pm.set_flags           token, local_addr, local_port, remote_addr, remote_port, backup
subscribe              events? (true), stats_interval? (0 = no stats)
stats.get              —  (one snapshot: connections and subflows)
run.iperf / .tcpdump   value: an int, the only thing a client chooses
=====================  =====================================================

Every command gets ``Result(request_id, ok, value, error)``; a kernel refusal
is ``ok=False`` with the kernel's own words, a bad argument (a ``dev`` that
does not exist, say) ``ok=False`` with words naming the argument. Nothing a
client sends makes ``on_message`` raise. ``request_id`` 0 (legacy sspi) means
no reply.

A ``token`` is an integer, or text in the one notation ipcgw prints
(``0x`` hex, or decimal): what ``ipcgw monitor`` shows can be pasted into
``ipcgw send``. ``dev`` names an interface of the handler's namespace and
becomes the ``ifindex`` the kernel gets; give one or the other.

``run.*`` starts only a program the operator configured at construction
(``programs={"iperf": [...argv...]}``): the value is checked to be an integer
and becomes one argv element (replacing a ``{value}`` element, else
appended); no shell ever sees it.

The event listener starts with the handler, so the userspace PM accepts joins
from the first moment. Events go to the policy's hooks and, as ``Event``
messages, to sessions that subscribed; ``Stats`` go to sessions that asked for
an interval, from one stats thread that owns the sock_diag reader.
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipcgw.messages import Command, Message, Result, Stats
from ipcgw.mptcp import genl
from ipcgw.mptcp.commands import BadArguments, SessionLike, execute, on_client_message, pm_ops
from ipcgw.mptcp.commands import args as _args
from ipcgw.mptcp.commands import flag as _flag
from ipcgw.mptcp.events import EventListener, MptcpEvent
from ipcgw.mptcp.genl import GenlSocket, KernelError
from ipcgw.mptcp.metrics import MetricsReader
from ipcgw.mptcp.pm import PathManager
from ipcgw.mptcp.policy import Policy
from ipcgw.netns import run_in_netns

try:  # the gateway's base class, when the server module is there
    from ipcgw.server import BaseHandler as _Base
except ImportError:  # pragma: no cover - only while the server is being written
    _Base = object  # type: ignore[assignment,misc]

__all__ = ["MptcpHandler", "SessionLike", "mptcp_available"]

log = logging.getLogger(__name__)

MIN_STATS_INTERVAL = 0.05
INT32 = range(-(2**31), 2**31)


def mptcp_available(netns: str | None = None) -> str | None:
    """None when this handler can drive the kernel's path manager in ``netns``
    (None: the caller's namespace); else why not, in words a user can act on.

    For ``serve --handler auto``: cheap and without side effects. It resolves
    the ``mptcp_pm`` genetlink family, reads ``net.mptcp.enabled`` and sends a
    DEL_ADDR without an address: the kernel checks CAP_NET_ADMIN before it
    looks at the request, so it answers EPERM (not allowed) or EINVAL (missing
    address), and never deletes anything.
    """
    where = f" in namespace {netns}" if netns else ""
    try:
        nl = GenlSocket(genl.MPTCP_PM_NAME, genl.mptcp_pm_msg, netns=netns)
    except KernelError as exc:
        if exc.code == errno.ENOENT:
            return f"no {genl.MPTCP_PM_NAME} genetlink family (kernel without MPTCP)"
        return f"{genl.MPTCP_PM_NAME} genetlink family unusable: {exc.message}"
    except FileNotFoundError:
        return f"no network namespace {netns!r} (ip netns list)"
    except OSError as exc:  # no right to enter the namespace, say
        hint = " (needs root)" if exc.errno == errno.EPERM else ""
        return f"cannot open a netlink socket{where}: {exc.strerror}{hint}"
    try:
        try:
            enabled = run_in_netns(netns, lambda: _read_text("/proc/sys/net/mptcp/enabled"))
        except OSError:
            return f"no net.mptcp sysctls{where} (kernel without MPTCP)"
        if enabled != "1":
            return (f"MPTCP is disabled{where}: net.mptcp.enabled={enabled} "
                    "(sysctl -w net.mptcp.enabled=1)")
        try:
            nl.request(genl.MPTCP_PM_CMD_DEL_ADDR)
        except KernelError as exc:
            if exc.code == errno.EPERM:
                return "changing MPTCP endpoints needs CAP_NET_ADMIN (run as root)"
            if exc.code != errno.EINVAL:
                return f"{genl.MPTCP_PM_NAME} refused a probe: {exc.message}"
            return None
        return f"{genl.MPTCP_PM_NAME} accepted a DEL_ADDR without an address: unknown kernel"
    finally:
        nl.close()


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@dataclass
class _Subscription:
    session: SessionLike
    events: bool = True
    stats_interval: float = 0.0
    next_stats: float = 0.0


class MptcpHandler(_Base):
    """Executes path-manager commands, streams events and stats, runs a policy.

    A ``--run`` program runs at most ``max_running`` times at once per name
    (default 1): a peer that repeats IPERF_START cannot fork the host to death.
    """

    drives_kernel = True

    def __init__(
        self,
        policy: Policy | None = None,
        programs: Mapping[str, Sequence[str]] | None = None,
        netns: str | None = None,
        listen_events: bool = True,
        max_running: int = 1,
        lean: bool = True,
    ) -> None:
        self.netns = netns
        self.max_running = max_running
        self.pm = PathManager(netns, lean=lean)  # lean=False: every command through pyroute2
        self.policy = policy
        if policy is not None:
            policy.bind(self.pm)
        self.programs = {name: list(argv) for name, argv in (programs or {}).items()}
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._subs: dict[int, _Subscription] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._stats_wake = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self._events: EventListener | None = None
        if listen_events:
            self._events = EventListener(netns, self._on_event).start()
        self._ops: dict[str, Callable[[SessionLike, Mapping[str, Any]], Any]] = {
            **pm_ops(self.pm, lambda a, op: self._dev(a)),
            "subscribe": self._subscribe,
            "stats.get": self._stats_get,
            "run.iperf": lambda s, a: self._run_program("iperf", a),
            "run.tcpdump": lambda s, a: self._run_program("tcpdump", a),
        }

    # -- gateway interface -----------------------------------------------------

    def on_connect(self, session: SessionLike) -> None:
        log.info("mptcp handler: session %s connected", session.id)

    def on_message(self, session: SessionLike, msg: Message) -> Message | None:
        return on_client_message(self.execute, self.policy, session, msg)

    def on_disconnect(self, session: SessionLike) -> None:
        with self._lock:
            self._subs.pop(session.id, None)
        if self.policy is not None:
            self.policy.session_closed(session.id)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._stats_wake.set()
        if self._events is not None:
            self._events.stop()
        if self._stats_thread is not None:
            self._stats_thread.join(timeout=5)
        if self.policy is not None:
            try:
                self.policy.close()
            except Exception:
                log.exception("policy close failed")
        for _, proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.pm.close()

    # -- commands --------------------------------------------------------------

    def execute(self, session: SessionLike, cmd: Command) -> Result | None:
        """Run one command; the Result (None when request_id is 0: no reply wanted)."""
        return execute(self._ops, session, cmd)

    def _dev(self, a: dict[str, Any]) -> dict[str, Any]:
        """``dev=NAME`` -> ``ifindex``, looked up in the handler's namespace."""
        if "dev" not in a:
            return a
        dev = a.pop("dev")
        if "ifindex" in a:
            raise BadArguments("give dev or ifindex, not both")
        if not isinstance(dev, str) or not dev:
            raise BadArguments(f"dev must be an interface name, got {dev!r}")
        try:
            a["ifindex"] = run_in_netns(self.netns, lambda: socket.if_nametoindex(dev))
        except (OSError, ValueError):  # no such name; a NUL in it
            where = f" in namespace {self.netns}" if self.netns else ""
            raise BadArguments(f"no such interface {dev!r}{where} (dev=)") from None
        return a

    def _subscribe(self, session: SessionLike, args: Mapping[str, Any]) -> dict[str, Any]:
        a = _args(args, [], ["events", "stats_interval"])
        events = _flag(a.get("events", True), "events")
        interval = a.get("stats_interval") or 0.0
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval < 0:
            raise BadArguments(f"stats_interval must be a number >= 0, got {interval!r}")
        interval = max(float(interval), MIN_STATS_INTERVAL) if interval else 0.0
        with self._lock:
            if not events and not interval:
                self._subs.pop(session.id, None)
            else:
                self._subs[session.id] = _Subscription(session, events, interval, 0.0)
        if interval:
            self._ensure_stats_thread()
        return {"events": events, "stats_interval": interval}

    def _stats_get(self, session: SessionLike, args: Mapping[str, Any]) -> dict[str, Any]:
        _args(args, [], [])
        with MetricsReader(self.netns) as reader:  # per call: readers are thread-bound
            now, conns, subflows = reader.snapshot()
        return {"time": now, "connections": conns, "subflows": subflows}

    def _run_program(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        a = _args(args, [], ["value"])
        value = a.get("value", 0)
        if type(value) is not int or value not in INT32:
            raise BadArguments(f"value must be a 32-bit integer, got {value!r}")
        base = self.programs.get(name)
        if not base:
            raise BadArguments(f"no {name} program configured on this server (serve --run)")
        if "{value}" in base:
            argv = [str(value) if part == "{value}" else part for part in base]
        else:
            argv = [*base, str(value)]
        with self._lock:
            self._procs = [(n, p) for n, p in self._procs if p.poll() is None]
            running = sum(1 for n, _ in self._procs if n == name)
            if running >= self.max_running:
                raise BadArguments(f"{name} is already running ({running} of at most "
                                   f"{self.max_running}); wait for it to end")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            self._procs.append((name, proc))
        log.info("started %s (pid %d): %s", name, proc.pid, argv)
        return {"pid": proc.pid, "argv": argv}

    # -- events and stats ------------------------------------------------------

    def _on_event(self, ev: MptcpEvent) -> None:
        if self.policy is not None:
            try:
                self.policy.dispatch(ev)
            except Exception:
                log.exception("policy hook failed on %s", ev.kind)
        msg = ev.to_message()
        for sub in self._subscribers(lambda s: s.events):
            sub.session.post(msg)

    def _subscribers(self, want: Callable[[_Subscription], bool]) -> list[_Subscription]:
        with self._lock:
            for sid in [sid for sid, s in self._subs.items() if s.session.closed]:
                del self._subs[sid]
            return [s for s in self._subs.values() if want(s)]

    def _ensure_stats_thread(self) -> None:
        with self._lock:
            if self._stats_thread is None and not self._closed.is_set():
                self._stats_thread = threading.Thread(
                    target=self._stats_loop, name="mptcp-stats", daemon=True)
                self._stats_thread.start()
        self._stats_wake.set()

    def _stats_loop(self) -> None:
        reader = MetricsReader(self.netns)
        try:
            while not self._closed.is_set():
                subs = self._subscribers(lambda s: s.stats_interval > 0)
                now = time.monotonic()
                due = [s for s in subs if s.next_stats <= now]
                if due:
                    try:
                        stamp, conns, subflows = reader.snapshot()
                    except Exception:
                        log.exception("reading TCP/MPTCP stats failed")
                        stamp, conns, subflows = time.time(), [], []
                    msg = Stats(stamp, conns, subflows)
                    for s in due:
                        s.session.post(msg)
                        s.next_stats = now + s.stats_interval
                nexts = [s.next_stats for s in subs]
                wait = max(0.0, min(nexts) - time.monotonic()) if nexts else 3600.0
                self._stats_wake.wait(wait)
                self._stats_wake.clear()
        finally:
            reader.close()
