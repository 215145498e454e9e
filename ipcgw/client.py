"""The client API: ``ipcgw.connect(url) -> Client``.

No background thread: the caller's own thread reads, so a synchronous NS-3
script pays one wake-up per round trip, not two. Several threads may use one
client: whichever thread is reading routes each message to the request that
awaits it (by ``request_id``, or ``seq`` for Ping) or to the inbox that
``recv()`` drains, and wakes the others.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

from ipcgw.channel import Channel
from ipcgw.errors import (
    ConnectError,
    DecodeError,
    Disconnected,
    FramingError,
    IpcgwError,
    RemoteError,
    RemoteProtocolError,
    Timeout,
)
from ipcgw.messages import (
    PROTOCOL_VERSION,
    Bye,
    Command,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Result,
    Welcome,
)
from ipcgw.transports import connect_bytes
from ipcgw.transports.base import deadline_after, remaining
from ipcgw.url import Endpoint, parse_url

__all__ = ["Client", "connect"]

log = logging.getLogger("ipcgw.client")


def connect(url: str | Endpoint, timeout: float = 5.0, name: str = "") -> Client:
    """Connect and handshake; ConnectError (with the reason) if no server answers in time."""
    endpoint = parse_url(url) if isinstance(url, str) else url
    deadline = deadline_after(timeout)
    conn = connect_bytes(endpoint, timeout)
    client = Client(Channel(conn, endpoint), name)
    try:
        client._handshake(remaining(deadline) or 0.001)
    except BaseException:
        client.close(say_bye=False)
        raise
    return client


def _token(endpoint: Endpoint) -> str:
    """The server's shared secret, from ``?token=`` or ``?token_file=`` (read once)."""
    path = endpoint.params.get("token_file")
    if path is None:
        return endpoint.params.get("token", "")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        raise ConnectError(f"cannot read the token file {path}: {exc.strerror}") from None


#: What a Command's reply takes the server beyond an echo (a kernel path-manager
#: command: 10-250 us): a transport that spins for replies may spin that long.
COMMAND_TURNAROUND = 250e-6

#: Requests that timed out whose replies may still come: kept to drop those
#: replies, never to hand them to recv() as if they were new messages.
_ABANDONED_KEPT = 1024


def _answer_key(msg: Message) -> int:
    """The request a message answers (Pong: its seq; Result, Error: request_id), or 0."""
    kind = type(msg)
    if kind is Pong:
        return msg.seq  # type: ignore[attr-defined, no-any-return]
    if kind is Result or kind is Error:
        return msg.request_id  # type: ignore[attr-defined, no-any-return]
    return 0


class Client:
    """A connected gateway client; use as a context manager."""

    def __init__(self, channel: Channel, name: str = "") -> None:
        self.channel = channel
        self.endpoint = channel.endpoint
        self.name = name
        self.session = 0
        self.server = ""
        self._ids = itertools.count(1)
        # Critical sections take the Lock itself (Condition.__enter__ is a Python
        # call); only waits and notifies go through the Condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reading = False
        self._waiting = 0  # threads in cond.wait (guarded by the lock): notify only them
        self._inbox: deque[Message] = deque()
        self._replies: dict[int, Message] = {}
        self._awaited: set[int] = set()
        self._failure: IpcgwError | None = None
        self._abandoned: dict[int, None] = {}  # insertion-ordered: the oldest go first
        self._said: Error | None = None  # the server's last session-level Error
        self._closed = False
        self._send, self._recv = channel.send, channel.recv
        self._expect_reply = channel.conn.expect_reply

    # ------------------------------------------------------------ public

    def send(self, msg: Message) -> None:
        """Send one message (thread-safe)."""
        try:
            self._send(msg)
        except Disconnected as exc:
            raise self._explained(exc) from None

    def recv(self, timeout: float | None = None) -> Message:
        """Next message that is not the reply to a pending request."""
        return self._next(None, timeout)

    def request(self, msg: Command | Ping, timeout: float | None = 5.0) -> Message:
        """Send and wait for the matching Result / Error / Pong."""
        ping = isinstance(msg, Ping)
        key = msg.seq if ping else msg.request_id  # type: ignore[union-attr]
        if not key:
            key = next(self._ids)
            if ping:
                msg.seq = key  # type: ignore[union-attr]
            else:
                msg.request_id = key  # type: ignore[union-attr]
        with self._lock:
            # Before sending. With nobody reading we become the reader now (and
            # take our reply ourselves); otherwise the reading thread must keep
            # our reply for us.
            reading = not self._reading and self._failure is None
            if reading:
                self._reading = True
            else:
                self._awaited.add(key)
        if not ping:
            self._expect_reply(COMMAND_TURNAROUND)
        try:
            self._send(msg)
        except Disconnected as exc:
            self._finish(key, reading)
            raise self._explained(exc) from None
        except BaseException:
            self._finish(key, reading)
            raise
        try:
            return self._read_reply(key, timeout) if reading else self._next(key, timeout)
        except Timeout:
            self._abandon(key)
            raise

    def submit(self, cmd: Command) -> int:
        """Send a Command without waiting for it; its Result comes from ``recv()``
        like an Event, with the returned request id (ids never collide with
        ``request()``'s: both come from this client's one counter)."""
        cmd.request_id = next(self._ids)
        self.send(cmd)
        return cmd.request_id

    def queued(self) -> Message | None:
        """A message already read for ``recv()`` (by a thread that waited for its own
        reply meanwhile), or None. Never touches the transport, so it never blocks."""
        with self._lock:
            return self._inbox.popleft() if self._inbox else None

    def command(self, op: str, timeout: float | None = 5.0, **args: Any) -> Any:
        """Run a server command; its value, or IpcgwError with the server's words."""
        reply = self.request(Command(0, op, args), timeout)
        if isinstance(reply, Result) and reply.ok:
            return reply.value
        text = reply.error if isinstance(reply, Result) else getattr(reply, "reason", reply)
        raise RemoteError(str(text), op)

    def ping(self, payload: bytes | memoryview = b"", timeout: float | None = 5.0) -> bytes | memoryview:
        """The Pong's payload: bytes, or a read-only memoryview onto the received
        frame for a bulk one (``messages.BULK_BIN`` bytes and up, in a large frame)."""
        reply = self.request(Ping(0, payload), timeout)
        if type(reply) is not Pong:
            raise RemoteProtocolError(f"expected Pong, got {reply!r}")
        return reply.payload

    def close(self, say_bye: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if say_bye and self.channel.codec.handshake:
            with contextlib.suppress(IpcgwError):
                self.channel.send(Bye("client closing"))
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _handshake(self, timeout: float) -> None:
        if not self.channel.codec.handshake:
            return
        ep = self.endpoint
        try:
            self.channel.send(Hello(PROTOCOL_VERSION, ep.framing, ep.codec, self.name, _token(ep)))
        except Disconnected as exc:  # refused at once (say, one client too many): why?
            raise ConnectError(f"server at {ep} closed the connection: "
                               f"{self._explained(exc)}") from None
        try:
            reply = self.channel.recv(timeout)
        except Timeout:
            raise ConnectError(f"server at {ep} did not answer Hello within {timeout:.1f} s") \
                from None
        except Disconnected as exc:
            raise ConnectError(f"server at {ep} closed the connection: {self._explained(exc)}") \
                from None
        except (FramingError, DecodeError) as exc:
            raise ConnectError(
                f"the answer from {ep} is not a Welcome in framing {ep.framing} / codec "
                f"{ep.codec} ({exc}): use the same framing and codec as the server's URL"
            ) from None
        if isinstance(reply, Error):
            raise ConnectError(f"server refused: {reply.reason}")
        if not isinstance(reply, Welcome):
            raise RemoteProtocolError(f"expected Welcome, got {type(reply).__name__}")
        self.session, self.server = reply.session, reply.server

    def _take(self, key: int | None) -> Message | None:
        if key is None:
            return self._inbox.popleft() if self._inbox else None
        return self._replies.pop(key, None)

    def _next(self, key: int | None, timeout: float | None, reading: bool = False) -> Message:
        """Next message for ``key`` (a request id) or, with None, for the inbox.

        Whoever finds no thread reading becomes the reader (``reading``: the
        caller already is); the others wait on the condition. A request's
        bookkeeping is undone in the same critical section that ends it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        cond, lock = self._cond, self._lock
        left = timeout
        try:
            if not reading:
                with lock:
                    while True:
                        msg = self._take(key)
                        if msg is not None:
                            return msg
                        if self._failure is not None:
                            raise self._failure
                        if not self._reading:
                            self._reading = reading = True
                            break
                        left = remaining(deadline)
                        if left == 0.0:
                            raise Timeout(f"no reply within {timeout} s")
                        self._waiting += 1
                        try:
                            cond.wait(left)
                        finally:
                            self._waiting -= 1
                left = remaining(deadline)
            recv = self._recv
            while True:  # this thread reads
                try:
                    msg = recv(left)
                except Timeout:
                    raise
                except IpcgwError as exc:
                    raise self._failed(exc) from None
                reply_key = _answer_key(msg)
                if reply_key == key:
                    return msg
                if reply_key in self._abandoned or self._session_error(msg):
                    left = remaining(deadline)
                    continue
                if key is None and not (reply_key and reply_key in self._awaited):
                    return msg  # the inbox reader's own
                self._keep(msg, reply_key)
                left = remaining(deadline)
        finally:
            self._finish(key, reading)

    def _read_reply(self, key: int, timeout: float | None) -> Message:
        """As the only reader, the common case: one read brings the reply. Anything
        else that comes first is kept for its owner and the general loop goes on."""
        start = None if timeout is None else time.monotonic()
        done = True
        try:
            try:
                msg = self._recv(timeout)
            except Timeout:
                raise
            except IpcgwError as exc:
                raise self._failed(exc) from None
            kind = type(msg)
            if (kind is Pong and msg.seq == key) or (  # type: ignore[attr-defined]
                    (kind is Result or kind is Error) and msg.request_id == key):  # type: ignore[attr-defined]
                return msg
            reply_key = _answer_key(msg)
            if not (reply_key in self._abandoned or self._session_error(msg)):
                self._keep(msg, reply_key)
            done = False
        finally:
            if done:
                self._finish(None, True)
        left = None if start is None else max(0.0, start + timeout - time.monotonic())  # type: ignore[operator]
        return self._next(key, left, reading=True)

    def _abandon(self, key: int) -> None:
        """A request timed out: its reply, if it still comes, is dropped on arrival."""
        with self._lock:
            self._abandoned[key] = None
            if len(self._abandoned) > _ABANDONED_KEPT:
                del self._abandoned[next(iter(self._abandoned))]

    def _session_error(self, msg: Message) -> bool:
        """Drop a late reply (True) or note the server's session-level Error (kept, False)."""
        kind = type(msg)
        if kind is Pong or kind is Result or kind is Error:
            key = _answer_key(msg)
            if key in self._abandoned:
                with self._lock:
                    self._abandoned.pop(key, None)
                log.debug("dropped a late %s for timed-out request %d", kind.__name__, key)
                return True
            if kind is Error and not key:
                self._said = msg  # type: ignore[assignment]
        return False

    def _explained(self, exc: Disconnected) -> Disconnected:
        """A disconnect with the server's own reason, when it managed to send one."""
        said = self._said
        if said is None:
            with self._lock:  # the Error may sit unread behind a failed send: read if nobody does
                reading = not self._reading
                self._reading = True
            if reading:
                try:
                    with contextlib.suppress(IpcgwError):
                        msg = self._recv(0.2)
                        if type(msg) is Error:
                            said = msg
                finally:
                    self._finish(None, True)
        if said is None:
            return exc
        return Disconnected(f"the server closed the session: {said.reason}")

    def _failed(self, exc: IpcgwError) -> IpcgwError:
        if isinstance(exc, Disconnected):
            exc = self._explained(exc)
        with self._lock:
            self._failure = exc
        return exc

    def _keep(self, msg: Message, reply_key: int) -> None:
        """A message the reading thread does not want itself: a reply another thread
        awaits, or the inbox."""
        with self._lock:
            if reply_key and reply_key in self._awaited:
                self._replies[reply_key] = msg
            else:
                self._inbox.append(msg)
            if self._waiting:
                self._cond.notify_all()

    def _finish(self, key: int | None, reading: bool) -> None:
        with self._lock:
            if reading:
                self._reading = False
            if key is not None:
                self._awaited.discard(key)
                self._replies.pop(key, None)
            if self._waiting:
                self._cond.notify_all()
