"""``SimClient``: one ipcgw client bound to the running ns-3 simulation.

Two modes:

- **async** (default): reports are written as their trace fires and the
  simulation goes on. A receiver thread reads what the server sends (Events,
  Results of commands) and hands it to the simulation thread through the C++
  ``Inbox`` (``Simulator::ScheduleWithContext``, thread-safe in the default
  and the real-time simulator), so handlers may touch ns-3 objects.
- **lockstep**: after each report the simulation thread itself waits for the
  server's answer before its next event runs (gym-style). Without ``step_op``
  the answer is a Pong: the server handles a session's messages in order, so
  a Pong proves the report was processed (the policy has acted). With
  ``step_op`` a ``Command(step_op, {"sim_time": t})`` is sent and its Result
  goes to the handlers (an agent's action). No receiver thread: whatever else
  arrived is dispatched after each step, still in the simulation thread.

A failure inside the simulation (server gone, lockstep timeout, a handler
that raised) must not unwind through ns-3's C++ event loop: it is stored,
``Simulator::Stop()`` ends the run after the current event, and
:meth:`SimClient.run` (or :meth:`check`, or leaving the ``with`` block) raises
it. Legacy ``codec=sspi`` URLs reach an mptcpd sspi FIFO: reports are cut to
``snr_db`` (the only metric the 8-byte protocol has), backup decisions become
BACKUP_FLAG_ON / CLEAR_FLAGS, and nothing is ever read back.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import ipcgw
from ipcgw.errors import ConnectError, Disconnected, IpcgwError, Timeout
from ipcgw.messages import Bye, Command, Message, Report, Result
from ns3_side import _cpp

__all__ = ["LockstepError", "SimClient", "SimulationAborted"]

log = logging.getLogger("ns3_side")

# Objects ns-3 may still hold raw pointers to after their gateway closed
# (trace sources cannot always be disconnected): kept until the process ends.
_RETIRED: list[Any] = []


class SimulationAborted(IpcgwError):
    """The gateway stopped the simulation; the cause is chained and in the text."""


class LockstepError(SimulationAborted):
    """In lockstep mode the server did not answer (timeout) or went away."""


Handler = Callable[[Message], None]


class SimClient:
    """Connect to an ipcgw server and feed it from ns-3 trace hooks.

    Create it after choosing the simulator implementation (real-time or not):
    it touches the simulator. Use as a context manager, or call :meth:`run`.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        name: str = "ns3",
        lockstep: bool = False,
        step_op: str | None = None,
        step_timeout: float = 5.0,
        on_disconnect: str = "stop",
    ) -> None:
        if on_disconnect not in ("stop", "ignore"):
            raise ValueError("on_disconnect must be 'stop' or 'ignore'")
        self.ns, self.cpp = _cpp.load()
        self.url = url
        self.lockstep = lockstep
        self.step_op = step_op
        self.step_timeout = step_timeout
        self.on_disconnect = on_disconnect
        self.reports_sent = 0
        self.reports_unsendable = 0
        self.reports_dropped = 0
        self.steps = 0
        self.failure: BaseException | None = None
        self._handlers: list[tuple[tuple[type, ...], Handler]] = []
        self._after_emit: list[Callable[[Report], Any]] = []
        self._owned: list[Any] = []  # C++ objects ns-3 calls into
        self._inbox: deque[Message | BaseException] = deque()
        self._closing = False
        self._closed = False
        self._dead = False
        self._receiver: threading.Thread | None = None
        self.ns.Simulator.Now()  # create the simulator impl here, in this thread
        try:
            self.client = ipcgw.connect(url, timeout=timeout, name=name)
        except ConnectError as exc:
            raise ConnectError(
                f"ns3_side: no ipcgw server answering at {url}: {exc} "
                f"(start one with: python -m ipcgw serve --listen '{url}')"
            ) from exc
        codec = self.client.channel.codec
        self.legacy = not codec.handshake
        self._send = self.client.send
        if lockstep and not codec.replies:
            self.client.close()
            raise ValueError(f"lockstep needs a codec with replies; {codec.name} has none")
        self._at_destroy = self.cpp.Once()
        self._at_destroy.fn = self._destroyed
        self._at_destroy.AtDestroy()
        self._owned.append(self._at_destroy)
        self._wake = None
        if codec.replies and not lockstep:
            inbox = self.cpp.Inbox()
            inbox.fn = self._guard(self._drain)
            self._owned.append(inbox)
            self._wake = inbox.Wake
            self._receiver = threading.Thread(target=self._receive_loop, daemon=True,
                                              name="ns3_side-recv")
            self._receiver.start()

    # ------------------------------------------------------------ to the server

    def emit(self, report: Report) -> None:
        """Send one report now (from the simulation thread); lockstep waits for the server."""
        if self._dead or self._closed:
            self.reports_dropped += 1
            return
        if self.legacy:
            snr = report.metrics.get("snr_db")
            if snr is None:
                self.reports_unsendable += 1
                return
            report = Report(report.sim_time, report.path_id, {"snr_db": snr}, report.node_id)
        try:
            self._send(report)
        except IpcgwError as exc:
            self._lost(exc, f"sending a report at sim time {report.sim_time:.6f} s")
            return
        self.reports_sent += 1
        if self.lockstep:
            self.step(report.sim_time)
        for fn in self._after_emit:
            fn(report)

    def report(self, path_id: int, metrics: dict[str, Any], node_id: int = 0) -> None:
        """A report stamped with the current simulation time."""
        self.emit(Report(self.now(), path_id, metrics, node_id))

    def step(self, sim_time: float | None = None) -> Any:
        """Lockstep barrier: wait for the server; returns the step Result's value (or None)."""
        t = self.now() if sim_time is None else sim_time
        value = None
        try:
            if self.step_op:
                reply = self.client.request(Command(0, self.step_op, {"sim_time": t}),
                                            self.step_timeout)
                self._dispatch(reply)
                value = reply.value if isinstance(reply, Result) else None
            else:
                self.client.ping(b"", self.step_timeout)
        except Timeout as exc:
            self._fail(LockstepError(
                f"lockstep: the server at {self.url} did not answer within "
                f"{self.step_timeout} s at sim time {t:.6f} s"), exc)
            return None
        except IpcgwError as exc:
            self._fail(LockstepError(
                f"lockstep: lost the server at {self.url} at sim time {t:.6f} s: {exc}"), exc)
            return None
        self.steps += 1
        self._drain_pending()
        return value

    def command(self, op: str, *, wait: bool | None = None, **args: Any) -> Any:
        """Ask the server to act. Waits for the Result (returned) in lockstep or with
        ``wait=True``; otherwise returns at once and the Result reaches the handlers."""
        if self._dead or self._closed:
            return None
        if wait is None:
            wait = self.lockstep
        try:
            if wait and not self.legacy:
                reply = self.client.request(Command(0, op, args), self.step_timeout)
                self._dispatch(reply)
                return reply
            if self.legacy:
                self._send(Command(0, op, args))
            else:
                self.client.submit(Command(0, op, args))
        except IpcgwError as exc:
            self._lost(exc, f"sending command {op}")
        return None

    def set_backup(self, endpoint_id: int, backup: bool = True, **kw: Any) -> Any:
        """Mark an MPTCP endpoint backup (or clear it); sspi: BACKUP_FLAG_ON / CLEAR_FLAGS."""
        return self.command("endpoint.set_flags", id=endpoint_id, backup=backup, **kw)

    # ------------------------------------------------------------ from the server

    def on(self, fn: Handler, *types: type[Message]) -> Handler:
        """Call ``fn(msg)`` in the simulation thread for each message of ``types`` (all if
        none): Events, Results of async commands, Stats. May act on the simulation."""
        self._handlers.append((types or (Message,), fn))
        return fn

    def after_emit(self, fn: Callable[[Report], Any]) -> Callable[[Report], Any]:
        """Call ``fn(report)`` after each report went out (in lockstep: after the server
        answered for it), in the simulation thread: logging, or checking its effect."""
        self._after_emit.append(fn)
        return fn

    # ------------------------------------------------------------ simulation time

    def now(self) -> float:
        return float(self.ns.Simulator.Now().GetSeconds())

    def every(self, period_ms: float, fn: Callable[[float], Any], *,
              start_ms: float | None = None) -> Any:
        """Call ``fn(sim_time)`` every ``period_ms`` of sim time; a returned Report (or
        iterable of Reports) is emitted. Needs a Simulator.Stop: it never runs dry."""
        if period_ms <= 0:
            raise ValueError("period_ms must be > 0")
        ticker = self.cpp.Ticker()
        ticker.period = period_ms / 1000.0

        def tick(t: float) -> None:
            out = fn(t)
            if out is None:
                return
            for report in (out,) if isinstance(out, Report) else out:
                self.emit(report)

        ticker.fn = self._guard(tick)
        ticker.Start((period_ms if start_ms is None else start_ms) / 1000.0)
        self._owned.append(ticker)
        return ticker

    def schedule(self, delay_s: float, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` after ``delay_s`` of sim time (ns-3 cannot schedule Python directly)."""
        once = self.cpp.Once()
        once.fn = self._guard(lambda *_: fn())
        once.At(delay_s)
        self._owned.append(once)
        return once

    def own(self, obj: Any) -> Any:
        """Keep a C++ hook alive (and stop it) with this gateway."""
        self._owned.append(obj)
        return obj

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a Python callback that ns-3 will call: errors stop the simulation."""
        return self._guard(fn)

    # ------------------------------------------------------------ lifecycle

    def run(self, until: float | None = None, *, close: bool = True) -> None:
        """Simulator.Run() (GIL released) until ``until`` s; raise what stopped it."""
        ns = self.ns
        if until is not None:
            ns.Simulator.Stop(ns.Seconds(until))
        try:
            ns.Simulator.Run()
        finally:
            if close:
                self.close()
        self.check()

    def check(self) -> None:
        """Raise the failure that stopped the simulation, if any."""
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Stop every hook, say Bye, stop the receiver. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        for obj in self._owned:
            stop = getattr(obj, "Stop", None)
            if stop is not None:
                stop()
        _RETIRED.extend(self._owned)
        self._owned = []
        try:
            self.client.close()
        except Exception:  # closing must not hide the simulation's own outcome
            log.exception("closing the client failed")
        if self._receiver is not None and self._receiver is not threading.current_thread():
            self._receiver.join(timeout=2.0)

    def __enter__(self) -> SimClient:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
        if exc_type is None:
            self.check()

    # ------------------------------------------------------------ internals

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Exceptions must not unwind through ns-3 (cppyy would rebuild them lossily)."""

        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except BaseException as exc:  # KeyboardInterrupt too: stop cleanly
                if isinstance(exc, SimulationAborted):
                    self._fail(exc, exc.__cause__)
                else:
                    self._fail(SimulationAborted(
                        f"a callback failed at sim time {self.now():.6f} s: "
                        f"{type(exc).__name__}: {exc}"), exc)

        return guarded

    def _fail(self, error: SimulationAborted, cause: BaseException | None = None) -> None:
        if cause is not None and error.__cause__ is None:
            error.__cause__ = cause
        if self.failure is None:
            self.failure = error
            log.error("%s", error)
        self._dead = True
        self.cpp.StopNow()

    def _lost(self, exc: IpcgwError, doing: str) -> None:
        if self.lockstep:  # the simulation cannot go on without its answers
            self._fail(LockstepError(f"lockstep: lost the server at {self.url} while {doing}: "
                                     f"{exc}"), exc)
        elif self.on_disconnect == "stop":
            self._fail(SimulationAborted(f"lost the server at {self.url} while {doing}: {exc}"),
                       exc)
        else:
            if not self._dead:
                log.warning("lost the server at %s while %s: %s; reports are dropped from "
                            "now on", self.url, doing, exc)
            self._dead = True

    def _dispatch(self, msg: Message) -> None:
        for types, fn in self._handlers:
            if isinstance(msg, types):
                fn(msg)

    def _drain(self) -> None:
        """In the simulation thread: hand what the receiver queued to the handlers."""
        inbox = self._inbox
        while inbox:
            item = inbox.popleft()
            if isinstance(item, BaseException):
                if isinstance(item, IpcgwError):
                    self._lost(item, "reading from it")
                else:
                    raise item
                continue
            self._dispatch(item)

    def _drain_pending(self) -> None:
        """Lockstep: dispatch what the client read besides the step's own answer.

        Only messages already read (queued in the client while it waited for
        the reply) are taken; the rest come with the next step.
        """
        while (msg := self.client.queued()) is not None:
            if isinstance(msg, Bye):
                self._lost(Disconnected(f"server said bye: {msg.reason}"), "reading from it")
                return
            self._dispatch(msg)

    def _receive_loop(self) -> None:
        # Blocks without a timeout: every transport wakes a blocked recv when the
        # client is closed, and no deadline means no polling.
        client = self.client
        while not self._closing:
            try:
                msg = client.recv(timeout=None)
            except IpcgwError as exc:
                if not self._closing:
                    self._post(exc)
                return
            except Exception as exc:  # a bug in the client: surface it in the simulation
                if not self._closing:
                    self._post(exc)
                return
            if isinstance(msg, Bye):
                if not self._closing:
                    self._post(Disconnected(f"server said bye: {msg.reason}"))
                return
            self._post(msg)

    def _post(self, item: Message | BaseException) -> None:
        self._inbox.append(item)
        if self._wake is not None and not self._closing:
            self._wake()

    def _destroyed(self) -> None:
        """Simulator::Destroy: the simulation is over for good."""
        self.close()

