"""Listen to ``mptcp_pm_events`` and turn each message into a :class:`MptcpEvent`.

Its own netlink socket (commands and events share numbers; see genl.py).
Attribute names are the kernel's without the ``MPTCP_ATTR_`` prefix, in lower
case; ``saddr4``/``saddr6`` become ``saddr`` (likewise ``daddr``), and
``family`` tells which. The kernel sends no ``FAMILY`` with ANNOUNCED (nor
with REMOVED, which has no address at all), so where an address came without
one, ``family`` is set from the attribute it came in (``daddr4``: AF_INET).
Ports are decoded from network order.

:func:`format_event` prints a token as ``0x`` and 8 hex digits (what
:func:`~ipcgw.mptcp.pm.parse_token` reads back) and an IPv6 address with a
port as ``[addr]:port``.

A listener also keeps the userspace PM working: the kernel accepts joins and
ADD_ADDRs in userspace mode only while someone is subscribed to the group.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink import nlmsg

from ipcgw.messages import Event
from ipcgw.mptcp import genl
from ipcgw.mptcp.genl import EVENT_NAMES, GenlSocket
from ipcgw.mptcp.pm import format_token

__all__ = ["EventListener", "MptcpEvent", "decode_event", "format_event"]

log = logging.getLogger(__name__)

_RENAME = {"saddr4": "saddr", "saddr6": "saddr", "daddr4": "daddr", "daddr6": "daddr"}
_FAMILY = {"saddr4": socket.AF_INET, "daddr4": socket.AF_INET,
           "saddr6": socket.AF_INET6, "daddr6": socket.AF_INET6}
_PREFIX = len("MPTCP_ATTR_")


@dataclass(slots=True)
class MptcpEvent:
    """One path-manager event; ``kind`` is e.g. ``"SUB_ESTABLISHED"``."""

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0

    @property
    def token(self) -> int | None:
        return self.attrs.get("token")

    def to_message(self) -> Event:
        return Event(self.kind, dict(self.attrs), self.time)


def decode_event(msg: nlmsg, now: float | None = None) -> MptcpEvent | None:
    """A decoded ``mptcp_event_msg`` -> MptcpEvent (None for a non-event message)."""
    cmd = msg.get("cmd")
    if cmd is None:
        return None
    kind = EVENT_NAMES.get(cmd, f"UNKNOWN_{cmd}")
    attrs: dict[str, Any] = {}
    family: int | None = None
    for name, value in msg.get("attrs", ()):
        if name in ("MPTCP_ATTR_UNSPEC", "UNKNOWN"):
            continue
        key = name[_PREFIX:].lower()
        family = _FAMILY.get(key, family)
        attrs[_RENAME.get(key, key)] = value
    if family is not None:
        attrs.setdefault("family", family)
    return MptcpEvent(kind, attrs, time.time() if now is None else now)


def _hostport(addr: str, port: int | None) -> str:
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def format_event(ev: MptcpEvent) -> str:
    """One line per event, like ``ip mptcp monitor`` but with every attribute."""
    a = dict(ev.attrs)
    parts = [f"[{ev.kind:>16}]"]
    if "token" in a:
        parts.append(f"token={format_token(a.pop('token'))}")
    if "saddr" in a:
        parts.append(f"saddr={_hostport(a.pop('saddr'), a.pop('sport', None))}")
    if "daddr" in a:
        parts.append(f"daddr={_hostport(a.pop('daddr'), a.pop('dport', None))}")
    parts.extend(f"{k}={v}" for k, v in sorted(a.items()))
    return " ".join(parts)


class EventListener:
    """A subscriber to the events group of one namespace.

    Either iterate :meth:`events` in your own thread, or :meth:`start` a
    background thread that calls ``callback(event)`` for each one. A callback
    that raises is logged and does not stop the listener.
    """

    def __init__(
        self,
        netns: str | None = None,
        callback: Callable[[MptcpEvent], None] | None = None,
    ) -> None:
        self.netns = netns
        self.callback = callback
        self._nl = GenlSocket(
            genl.MPTCP_PM_NAME,
            genl.mptcp_event_msg,
            netns=netns,
            groups=[genl.MPTCP_PM_EV_GRP_NAME],
            rcvbuf=4 << 20,
        )
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.overruns = 0

    def events(self, timeout: float | None = None) -> Iterator[MptcpEvent]:
        """Yield events until :meth:`stop` (or ``timeout`` seconds of silence)."""
        poller = select.poll()
        poller.register(self._nl.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        wait_ms = None if timeout is None else int(timeout * 1000)
        while not self._stop.is_set():
            ready = poller.poll(wait_ms)
            if not ready:
                return
            if any(fd == self._wake_r for fd, _ in ready):
                return
            try:
                data = self._nl.sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: say so, go on
                    self.overruns += 1
                    log.warning("mptcp event socket overrun: events were lost")
                    continue
                if self._stop.is_set():
                    return
                raise
            now = time.time()
            for msg in self._nl.parse(data):
                ev = decode_event(msg, now)
                if ev is not None:
                    yield ev

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> EventListener:
        if self.callback is None:
            raise ValueError("start() needs a callback")
        self._thread = threading.Thread(
            target=self._run, name=f"mptcp-events:{self.netns or '-'}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self.callback is not None
        try:
            for ev in self.events():
                try:
                    self.callback(ev)
                except Exception:
                    log.exception("mptcp event callback failed on %s", ev.kind)
        except Exception:
            if not self._stop.is_set():
                log.exception("mptcp event listener died")

    def stop(self) -> None:
        """Stop the thread (if any) and close the socket; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._nl.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    close = stop

    def __enter__(self) -> EventListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
