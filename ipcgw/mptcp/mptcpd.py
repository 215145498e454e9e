"""The gateway handler for hosts that keep mptcpd: path management goes through mptcpd.

mptcpd owns the kernel's path-manager events on such a host; its
``ipcgw-bridge`` plugin (``contrib/mptcpd-ipcgw/``) connects to this gateway
over a JSON Lines listener (``unix:///run/ipcgw-mptcpd.sock?codec=json&
framing=delimited:lf``), says ``Hello(name="mptcpd-bridge")``, sends every
mptcpd callback as an ``Event`` and runs the Commands it gets through mptcpd's
own API (``mptcpd_pm_*``, ``mptcpd_kpm_*``), answering each with a ``Result``
(both wrapped in a ``Command`` with request id 0, see :func:`_unwrap`). Clients see what they see with
``--handler mptcp``: the same ops (table in :mod:`ipcgw.mptcp.handler`),
``subscribe`` for Events, a ``--policy`` whose ``self.pm`` is a
:class:`BridgePathManager` with the methods of
:class:`~ipcgw.mptcp.pm.PathManager`.

What differs, and why:

- Events carry what mptcpd's callbacks carry: ``token``, ``family``,
  ``saddr``/``sport``, ``daddr``/``dport``, ``server_side``, ``rem_id`` (not
  ``loc_id``, ``if_idx`` or ``error``, which mptcpd drops, nor ``backup``:
  mptcpd 0.12 passes the attribute's pointer as the bool, always true).
- mptcpd sends userspace-PM commands without waiting for the kernel's answer
  (a refusal lands in mptcpd's log only), so this handler checks what it can
  first: the ``token`` of a ``pm.*`` op must be a connection mptcpd reported,
  the subflow of ``pm.set_flags``/``pm.subflow_destroy`` one it reported open.
- ``endpoint.set_flags`` (sspi BACKUP_FLAG_ON / CLEAR_FLAGS, RssiPolicy) sets
  the endpoint's flags and, where the userspace PM runs the connections
  (mptcpd's mode), also MP_PRIOs each open subflow from the endpoint's
  address: the in-kernel endpoint table alone moves nothing there.
- ``pm.announce`` / ``pm.subflow_create`` take no ``ifindex``/``dev`` (mptcpd's
  API has none); ``pm.remove`` needs the address, remembered from the
  announce or given as ``addr``; ``run.*`` is refused.

Failure words: no bridge -> "no mptcpd bridge connected (is mptcpd running
with --load-plugins ipcgw-bridge?)"; the bridge goes away while a command
waits -> that command fails at once; mptcpd stuck -> it fails after
``command_timeout`` seconds. Only a session the gateway trusts to drive the
kernel (``Session.refusal`` empty) is taken as the bridge.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import logging
import queue
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipcgw.errors import IpcgwError
from ipcgw.messages import Command, Error, Event, Message, Ping, Pong, Result
from ipcgw.mptcp import genl
from ipcgw.mptcp.commands import BadArguments, SessionLike, execute, on_client_message, pm_ops
from ipcgw.mptcp.commands import args as _args
from ipcgw.mptcp.commands import flag as _flag
from ipcgw.mptcp.events import MptcpEvent
from ipcgw.mptcp.genl import KernelError
from ipcgw.mptcp.metrics import MetricsReader
from ipcgw.mptcp.pm import FlagsArg, flags_to_names, format_token, names_to_flags, parse_token
from ipcgw.mptcp.policy import Policy
from ipcgw.netns import run_in_netns
from ipcgw.server import BaseHandler

__all__ = ["NO_BRIDGE", "BridgePathManager", "MptcpdHandler"]

log = logging.getLogger(__name__)

BRIDGE_NAME = "mptcpd-bridge"
NO_BRIDGE = "no mptcpd bridge connected (is mptcpd running with --load-plugins ipcgw-bridge?)"
#: Events waiting for the policy and subscribers; past that they are dropped (and counted).
EVENT_QUEUE = 10000

Four = tuple[str, int, str, int]  # saddr, sport, daddr, dport


def _addr(value: Any, name: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise BadArguments(f"{name} must be an IPv4 or IPv6 address, got {value!r}") from None


def _int(value: Any, name: str, top: int, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= top:
        raise BadArguments(f"{name} must be an integer {low}..{top}, got {value!r}")
    return value


def _no_interface(a: Mapping[str, Any], op: str) -> None:
    if "ifindex" in a or "dev" in a:
        raise BadArguments(f"mptcpd's {op} takes no interface (ifindex/dev): leave it out, or "
                           "serve with --handler mptcp")


def _endpoint(ep: Mapping[str, Any]) -> dict[str, Any]:
    """A bridge endpoint -> the shape PathManager returns."""
    flags = ep.get("flags", 0)
    return {"id": ep.get("id"), "addr": ep.get("addr"), "port": ep.get("port", 0),
            "flags": flags, "flag_names": flags_to_names(flags), "ifindex": ep.get("ifindex", 0)}


def _missing_op(op: str) -> str | None:
    if op.startswith("run."):
        return "programs are not started under --handler mptcpd (serve --handler mptcp --run ...)"
    return None


@dataclass
class _Waiter:
    done: threading.Event
    result: Result | None = None
    failure: str = ""


@dataclass
class _Subscription:
    session: SessionLike
    events: bool = True
    stats_interval: float = 0.0


def _unwrap(cmd: Command) -> Message | None:
    """The bridge's upward Command -> the Result or Event it carries (None: malformed).

    The session layer passes only Reports and Commands from a client to a
    handler, so the bridge sends ``Command(0, "mptcpd.result", {request_id, ok,
    value, error})`` and ``Command(0, "mptcpd.event", {kind, attrs, time})``.
    """
    a = cmd.args
    if cmd.op == "mptcpd.result" and type(a.get("request_id")) is int and \
            type(a.get("ok")) is bool and isinstance(a.get("error", ""), str):
        return Result(a["request_id"], a["ok"], a.get("value"), a.get("error", ""))
    if cmd.op == "mptcpd.event" and isinstance(a.get("kind"), str) and \
            isinstance(a.get("attrs"), dict) and isinstance(a.get("time", 0.0), (int, float)):
        return Event(a["kind"], a["attrs"], float(a.get("time", 0.0)))
    log.warning("malformed message from the mptcpd bridge dropped: %s %r", cmd.op, a)
    return None


class BridgePathManager:
    """PathManager's methods, carried out by mptcpd through the connected bridge.

    What a policy's ``self.pm`` is under this handler; every refusal is a
    :class:`~ipcgw.mptcp.genl.KernelError` as with the kernel backend.
    """

    def __init__(self, handler: MptcpdHandler) -> None:
        self._h = handler

    # -- kernel PM -------------------------------------------------------------

    def endpoints(self) -> list[dict[str, Any]]:
        eps = self._h.call("kpm.dump_addrs", {}, "endpoint.show")
        return sorted((_endpoint(e) for e in eps), key=lambda e: e["id"])

    def endpoint(self, id: int) -> dict[str, Any]:
        return _endpoint(self._h.call("kpm.get_addr", {"id": _int(id, "id", 255, 1)},
                                      "endpoint.show"))

    def add_endpoint(self, addr: str, id: int | None = None, flags: FlagsArg = "subflow",
                     port: int | None = None, ifindex: int | None = None) -> dict[str, Any]:
        a: dict[str, Any] = {"addr": _addr(addr, "addr"), "flags": names_to_flags(flags)}
        if id:
            a["id"] = _int(id, "id", 255)
        if port:
            a["port"] = _int(port, "port", 65535)
        if ifindex:
            a["ifindex"] = _int(ifindex, "ifindex", 2**31 - 1)
        self._h.call("kpm.add_addr", a, "endpoint.add")
        for ep in self.endpoints():  # mptcpd's ACK has no id either: look it up
            if (ep["addr"], ep["port"]) == (a["addr"], port or 0) and (not id or ep["id"] == id):
                return ep
        raise KernelError(0, f"endpoint {addr} vanished right after it was added", "endpoint.add")

    def delete_endpoint(self, id: int, addr: str | None = None) -> None:
        self._h.call("kpm.remove_addr", {"id": _int(id, "id", 255, 1)}, "endpoint.delete")

    def flush_endpoints(self) -> None:
        self._h.call("kpm.flush_addrs", {}, "endpoint.flush")

    def set_endpoint_flags(self, id: int, backup: bool, fullmesh: bool = False) -> int:
        """Endpoint ``id``'s flags; in userspace-PM mode also MP_PRIO on its open subflows.

        Returns how many subflows were told. mptcpd's set_flags names the
        endpoint by address, so the id is looked up first.
        """
        ep = self.endpoint(id)
        bits = (genl.MPTCP_PM_ADDR_FLAG_BACKUP if backup else 0) | (
            genl.MPTCP_PM_ADDR_FLAG_FULLMESH if fullmesh else 0)
        a: dict[str, Any] = {"addr": ep["addr"], "flags": bits}
        if ep["port"]:
            a["port"] = ep["port"]
        self._h.call("kpm.set_flags", a, "endpoint.set_flags")
        if not self._h.userspace_pm():
            return 0
        told = 0
        for token, (saddr, sport, daddr, dport) in self._h.subflows_from(ep["addr"]):
            self.set_flags(token, saddr, sport, daddr, dport, backup)
            told += 1
        return told

    def limits(self) -> dict[str, int]:
        value: dict[str, int] = self._h.call("kpm.get_limits", {}, "limits.get")
        return value

    def set_limits(self, subflows: int | None = None, add_addr_accepted: int | None = None
                   ) -> dict[str, int]:
        a: dict[str, Any] = {}
        if subflows is not None:
            a["subflows"] = _int(subflows, "subflows", 2**32 - 1)
        if add_addr_accepted is not None:
            a["add_addr_accepted"] = _int(add_addr_accepted, "add_addr_accepted", 2**32 - 1)
        self._h.call("kpm.set_limits", a, "limits.set")
        return self.limits()

    # -- userspace PM ----------------------------------------------------------

    def announce(self, token: int, addr: str, id: int, port: int | None = None) -> int:
        """ADD_ADDR; mptcpd opens a listener for it and picks the port when none is given."""
        op = "pm.announce"
        text = _addr(addr, "addr")
        a: dict[str, Any] = {"token": self._h.known_token(token, op), "addr": text,
                             "id": _int(id, "id", 255, 1)}
        if port:
            a["port"] = _int(port, "port", 65535)
        value = self._h.call("pm.add_addr", a, op)
        chosen = int(value.get("port", port or 0)) if isinstance(value, dict) else port or 0
        self._h.remember_announce(token, id, text, chosen)
        return chosen

    def remove(self, token: int, id: int, addr: str | None = None) -> None:
        op = "pm.remove"
        token = self._h.known_token(token, op)
        known = self._h.announced(token, _int(id, "id", 255, 1))
        if addr is None and known is None:
            raise BadArguments(f"mptcpd's remove needs the address of id {id}: announce it "
                               "through this gateway, or give addr=")
        a: dict[str, Any] = {"token": token, "id": id,
                             "addr": _addr(addr, "addr") if addr else known[0]}  # type: ignore[index]
        if known and known[1] and (addr is None or known[0] == a["addr"]):
            a["port"] = known[1]
        self._h.call("pm.remove_addr", a, op)
        self._h.forget_announce(token, id)

    def subflow_create(self, token: int, local_addr: str, remote_addr: str, remote_port: int,
                       local_id: int | None = None, local_port: int | None = None,
                       backup: bool = False) -> None:
        op = "pm.subflow_create"
        a: dict[str, Any] = {"token": self._h.known_token(token, op),
                             "laddr": _addr(local_addr, "local_addr"),
                             "raddr": _addr(remote_addr, "remote_addr"),
                             "rport": _int(remote_port, "remote_port", 65535, 1),
                             "backup": int(bool(backup))}
        if local_id is not None:
            a["local_id"] = _int(local_id, "local_id", 255)
        if local_port:
            a["lport"] = _int(local_port, "local_port", 65535)
        self._h.call("pm.add_subflow", a, op)

    def subflow_destroy(self, token: int, local_addr: str, local_port: int, remote_addr: str,
                        remote_port: int) -> None:
        op = "pm.subflow_destroy"
        a = self._h.known_subflow(token, local_addr, local_port, remote_addr, remote_port, op)
        self._h.call("pm.remove_subflow", a, op)

    def set_flags(self, token: int, local_addr: str, local_port: int, remote_addr: str,
                  remote_port: int, backup: bool) -> None:
        op = "pm.set_flags"
        a = self._h.known_subflow(token, local_addr, local_port, remote_addr, remote_port, op)
        self._h.call("pm.set_backup", {**a, "backup": int(bool(backup))}, op)

    def close(self) -> None:
        """Nothing to release: mptcpd owns the netlink sockets."""


class MptcpdHandler(BaseHandler):
    """Routes path-manager Commands through mptcpd's ipcgw-bridge plugin.

    ``programs``/``max_running`` are accepted so ``serve --run`` fails per
    command with a clear reason rather than at start.
    """

    drives_kernel = True

    def __init__(
        self,
        policy: Policy | None = None,
        programs: Mapping[str, Sequence[str]] | None = None,
        max_running: int = 1,
        netns: str | None = None,
        command_timeout: float = 5.0,
        bridge_name: str = BRIDGE_NAME,
    ) -> None:
        self.netns = netns
        self.command_timeout = command_timeout
        self.bridge_name = bridge_name
        self.pm = BridgePathManager(self)
        self.policy = policy
        if policy is not None:
            policy.bind(self.pm)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._bridge: SessionLike | None = None
        self._pending: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._subs: dict[int, _Subscription] = {}
        #: token -> open subflows (as mptcpd reported them), and announced id -> (addr, port)
        self._conns: dict[int, set[Four]] = {}
        self._announced: dict[tuple[int, int], tuple[str, int]] = {}
        self._events: queue.Queue[MptcpEvent | None] = queue.Queue(EVENT_QUEUE)
        self.events_dropped = 0
        self._closed = threading.Event()
        self._event_thread = threading.Thread(target=self._event_loop, name="mptcpd-events",
                                              daemon=True)
        self._event_thread.start()
        self._ops: dict[str, Callable[[SessionLike, Mapping[str, Any]], Any]] = {
            **pm_ops(self.pm, self._interface),
            # mptcpd's remove names the address: give it, or announce through this gateway
            "pm.remove": lambda s, a: self.pm.remove(
                **self._token(_args(a, ["token", "id"], ["addr"]))),
            "subscribe": self._subscribe,
            "stats.get": self._stats_get,
        }

    # -- gateway interface -----------------------------------------------------

    def on_connect(self, session: SessionLike) -> None:
        if session.name != self.bridge_name:
            return
        refusal = getattr(session, "refusal", "")
        with self._lock:
            current = self._bridge
            if not refusal and (current is None or current.closed):
                self._bridge = session
                log.info("mptcpd bridge connected: session %s", session.id)
                return
        why = (f"not taken as the mptcpd bridge: {refusal}" if refusal else
               f"another mptcpd bridge is connected (session {current.id})")  # type: ignore[union-attr]
        log.warning("session %s says it is %r but is %s", session.id, self.bridge_name, why)
        session.send(Error(why))
        close = getattr(session, "close", None)
        if close is not None:
            close(why)

    def on_message(self, session: SessionLike, msg: Message) -> Message | None:
        if session is self._bridge:
            return self._from_bridge(msg)
        return on_client_message(self.execute, self.policy, session, msg)

    def on_disconnect(self, session: SessionLike) -> None:
        if self.policy is not None and session is not self._bridge:
            self.policy.session_closed(session.id)
        with self._lock:
            self._subs.pop(session.id, None)
            if session is not self._bridge:
                return
            self._bridge = None
            waiting = list(self._pending.values())
            self._pending.clear()
            self._conns.clear()
            self._announced.clear()
        for w in waiting:
            w.failure = "mptcpd bridge disconnected (mptcpd stopped?) before it answered"
            w.done.set()
        log.warning("mptcpd bridge (session %s) disconnected; %d command(s) failed",
                    session.id, len(waiting))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(None)
        self._event_thread.join(timeout=5)
        if self.policy is not None:
            try:
                self.policy.close()
            except Exception:
                log.exception("policy close failed")

    # -- the bridge --------------------------------------------------------------

    def call(self, op: str, args: dict[str, Any], what: str) -> Any:
        """One bridge op; its value, or KernelError with mptcpd's (or the bridge's) words."""
        with self._lock:
            bridge = self._bridge
            if bridge is None or bridge.closed:
                raise KernelError(errno.ENOTCONN, NO_BRIDGE, what)
            rid = next(self._ids)
            waiter = _Waiter(threading.Event())
            self._pending[rid] = waiter
        try:
            try:
                with self._send_lock:
                    bridge.send(Command(rid, op, args))
            except IpcgwError as exc:
                raise KernelError(errno.EPIPE, f"mptcpd bridge: sending {what} failed: {exc}",
                                  what) from None
            if not waiter.done.wait(self.command_timeout):
                raise KernelError(errno.ETIMEDOUT, f"mptcpd did not answer {what} within "
                                  f"{self.command_timeout:g} s (is mptcpd stopped or stuck?)", what)
        finally:
            with self._lock:
                self._pending.pop(rid, None)
        if waiter.failure:
            raise KernelError(errno.ECONNRESET, f"{what}: {waiter.failure}", what)
        result = waiter.result
        assert result is not None
        if not result.ok:
            raise KernelError(errno.EIO, result.error or f"mptcpd refused {what}", what)
        return result.value

    def _from_bridge(self, msg: Message) -> Message | None:
        if isinstance(msg, Command):  # the wire form: see _unwrap
            msg = _unwrap(msg)  # type: ignore[assignment]
        if isinstance(msg, Result):
            with self._lock:
                waiter = self._pending.get(msg.request_id)
            if waiter is None:
                log.info("late or unknown bridge result %s dropped", msg.request_id)
            else:
                waiter.result = msg
                waiter.done.set()
            return None
        if isinstance(msg, Event):
            if not isinstance(msg.attrs, dict) or not msg.kind:
                log.warning("malformed event from the mptcpd bridge dropped: %r", msg)
                return None
            ev = MptcpEvent(msg.kind, dict(msg.attrs), msg.time)
            self._track(ev)
            try:
                self._events.put_nowait(ev)
            except queue.Full:
                self.events_dropped += 1
                log.warning("mptcpd events dropped: %d waiting for the policy and subscribers",
                            EVENT_QUEUE)
            return None
        if isinstance(msg, Ping):
            return Pong(msg.seq, msg.payload)
        if isinstance(msg, Error):
            log.warning("mptcpd bridge says: %s", msg.reason)
        return None

    def _track(self, ev: MptcpEvent) -> None:
        """Which connections and subflows mptcpd reported open (the checks before a pm.* op)."""
        a = ev.attrs
        token = a.get("token")
        if type(token) is not int:
            return
        four = (a.get("saddr"), a.get("sport"), a.get("daddr"), a.get("dport"))
        whole = all(x is not None for x in four)
        with self._lock:
            if ev.kind in ("CREATED", "ESTABLISHED", "SUB_ESTABLISHED"):
                subs = self._conns.setdefault(token, set())
                if whole:
                    subs.add(four)  # type: ignore[arg-type]
            elif ev.kind == "SUB_CLOSED" and token in self._conns and whole:
                self._conns[token].discard(four)
            elif ev.kind == "CLOSED":
                self._conns.pop(token, None)
                for key in [k for k in self._announced if k[0] == token]:
                    del self._announced[key]

    def known_token(self, token: int, op: str) -> int:
        with self._lock:
            if self._bridge is None:  # the first thing to fix, whatever the token
                raise KernelError(errno.ENOTCONN, NO_BRIDGE, op)
            if token in self._conns:
                return token
        raise KernelError(errno.EINVAL, f"invalid token: mptcpd reported no connection "
                          f"{format_token(token)} (mptcpd sends {op} without waiting for the "
                          "kernel, so only connections it reported are tried)", op)

    def known_subflow(self, token: int, laddr: str, lport: int, raddr: str, rport: int,
                      op: str) -> dict[str, Any]:
        four = (_addr(laddr, "local_addr"), _int(lport, "local_port", 65535),
                _addr(raddr, "remote_addr"), _int(rport, "remote_port", 65535))
        self.known_token(token, op)
        with self._lock:
            if four in self._conns.get(token, ()):
                return {"token": token, "laddr": four[0], "lport": four[1], "raddr": four[2],
                        "rport": four[3]}
        raise KernelError(errno.ESRCH, f"subflow not found: mptcpd reported no open subflow "
                          f"{four[0]}:{four[1]} -> {four[2]}:{four[3]} on {format_token(token)}", op)

    def subflows_from(self, addr: str) -> list[tuple[int, Four]]:
        with self._lock:
            return [(token, four) for token, subs in self._conns.items() for four in subs
                    if four[0] == addr]

    def remember_announce(self, token: int, id: int, addr: str, port: int) -> None:
        with self._lock:
            self._announced[(token, id)] = (addr, port)

    def announced(self, token: int, id: int) -> tuple[str, int] | None:
        with self._lock:
            return self._announced.get((token, id))

    def forget_announce(self, token: int, id: int) -> None:
        with self._lock:
            self._announced.pop((token, id), None)

    def userspace_pm(self) -> bool:
        """Whether this namespace's connections are run by a userspace PM (mptcpd's mode)."""
        def read() -> bool:
            for path, userspace in (("/proc/sys/net/mptcp/path_manager", "userspace"),
                                    ("/proc/sys/net/mptcp/pm_type", "1")):
                try:
                    with open(path) as f:
                        return f.read().strip() == userspace
                except OSError:
                    continue
            return False
        return run_in_netns(self.netns, read)

    # -- events out ------------------------------------------------------------

    def _event_loop(self) -> None:
        """Policy hooks and fan-out off the bridge's thread: a hook that sends a
        command waits for the bridge's Result, which that thread delivers."""
        while True:
            ev = self._events.get()
            if ev is None:
                return
            if self.policy is not None:
                try:
                    self.policy.dispatch(ev)
                except Exception:
                    log.exception("policy hook failed on %s", ev.kind)
            msg = ev.to_message()
            for sub in self._subscribers():
                sub.session.post(msg)

    def _subscribers(self) -> list[_Subscription]:
        with self._lock:
            for sid in [sid for sid, s in self._subs.items() if s.session.closed]:
                del self._subs[sid]
            return [s for s in self._subs.values() if s.events]

    # -- commands --------------------------------------------------------------

    def execute(self, session: SessionLike, cmd: Command) -> Result | None:
        """Run one command; the Result (None when request_id is 0: no reply wanted)."""
        return execute(self._ops, session, cmd, _missing_op)

    @staticmethod
    def _token(a: dict[str, Any]) -> dict[str, Any]:
        a["token"] = parse_token(a["token"])
        return a

    def _interface(self, a: dict[str, Any], op: str) -> dict[str, Any]:
        """``dev=`` -> ``ifindex=`` for an endpoint; mptcpd binds no subflow or announce to one."""
        if op != "endpoint.add":
            _no_interface(a, op)
            return a
        if "dev" in a:
            dev = a.pop("dev")
            if "ifindex" in a:
                raise BadArguments("give dev or ifindex, not both")
            a["ifindex"] = self._ifindex(dev)
        return a

    def _ifindex(self, dev: Any) -> int:
        if not isinstance(dev, str) or not dev:
            raise BadArguments(f"dev must be an interface name, got {dev!r}")
        try:
            return run_in_netns(self.netns, lambda: socket.if_nametoindex(dev))
        except (OSError, ValueError):
            raise BadArguments(f"no such interface {dev!r} (dev=)") from None

    def _subscribe(self, session: SessionLike, args: Mapping[str, Any]) -> dict[str, Any]:
        a = _args(args, [], ["events", "stats_interval"])
        events = _flag(a.get("events", True), "events")
        if a.get("stats_interval"):
            raise BadArguments("Stats are not streamed under --handler mptcpd: ask stats.get "
                               "(or serve --handler mptcp)")
        with self._lock:
            if events:
                self._subs[session.id] = _Subscription(session, events)
            else:
                self._subs.pop(session.id, None)
        return {"events": events, "stats_interval": 0.0}

    def _stats_get(self, session: SessionLike, args: Mapping[str, Any]) -> dict[str, Any]:
        _args(args, [], [])
        with MetricsReader(self.netns) as reader:  # sock_diag: read-only, needs no mptcpd
            now, conns, subflows = reader.snapshot()
        return {"time": now, "connections": conns, "subflows": subflows}
