"""The gateway server: listeners, sessions, and a handler that decides what messages mean.

Threading model: one accept thread per listener, one reader thread per
session (it runs the handler and writes replies directly, so a round trip
costs no thread hand-off), and a writer thread per session created only when
messages are *posted* from other threads (MPTCP events, stats), behind a
bounded queue. A session that cannot keep up (its send times out or its
queue overflows) is dropped; nothing one client does blocks another.

Errors, by where they stop:
- a frame that is not a valid message (DecodeError): the client gets an
  ``Error`` and the session goes on (frame boundaries are intact);
- a broken stream (FramingError, e.g. an oversize length header): ``Error``
  where the transport can answer, then disconnect;
- a handler bug: ``Error("internal error ...")``, logged with its traceback,
  the session goes on; the server never dies of a client.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import itertools
import logging
import os
import queue
import resource
import threading
import time
from collections.abc import Callable, Iterable
from typing import ClassVar

from ipcgw.channel import Channel
from ipcgw.errors import (
    CodecError,
    ConnectError,
    DecodeError,
    Disconnected,
    FramingError,
    IpcgwError,
    ProtocolError,
    RemoteProtocolError,
    Timeout,
    TransportError,
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
    Report,
    Welcome,
)
from ipcgw.transports import listen as listen_url
from ipcgw.transports.base import Connection, Listener, ListenerClosed
from ipcgw.url import Endpoint, parse_url

__all__ = ["BaseHandler", "Gateway", "Session"]

log = logging.getLogger("ipcgw.server")

OnMessage = Callable[["Session", Message], "Message | None"]


def _default_max_clients() -> int:
    """Sessions per listener: each costs a thread (~0.3 MiB) and up to 4 fds."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(256, (soft - 64) // 8))


DEFAULT_MAX_CLIENTS = _default_max_clients()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Session:
    """One connected client."""

    def __init__(self, gateway: Gateway, conn: Connection, endpoint: Endpoint, sid: int) -> None:
        self.gateway = gateway
        self.id = sid
        self.name = ""
        self.endpoint = endpoint
        self.channel = Channel(conn, endpoint)
        self.replies = self.channel.codec.replies
        self._closed = threading.Event()
        self._close_reason = ""
        self._outbox: queue.Queue[Message] | None = None
        self._outbox_lock = threading.Lock()
        conn.send_timeout = gateway.send_timeout
        self.channel.frame_timeout = gateway.frame_timeout
        #: Why this peer may not drive the handler's backend ("" = it may): see Gateway.
        self.refusal = ""

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def peer(self) -> str:
        return self.channel.conn.peer

    def __str__(self) -> str:
        return f"session {self.id} ({self.name or 'unnamed'}, {self.peer})"

    def send(self, msg: Message) -> None:
        """Write now, from the session's own thread (replies)."""
        if self.replies and not self.closed:
            self.channel.send(msg)

    def post(self, msg: Message) -> None:
        """Queue for delivery from any thread; never blocks. Overflow drops the session."""
        if not self.replies or self.closed:
            return
        if self._outbox is None:
            with self._outbox_lock:
                if self._outbox is None:
                    self._outbox = queue.Queue(self.gateway.outbox_limit)
                    threading.Thread(target=self._write_loop, name=f"ipcgw-w{self.id}",
                                     daemon=True).start()
        try:
            self._outbox.put_nowait(msg)
        except queue.Full:
            self.close(f"dropped: {self.gateway.outbox_limit} messages queued and not read")

    def close(self, reason: str = "") -> None:
        if self._closed.is_set():
            return
        self._close_reason = reason
        self._closed.set()
        if self._outbox is not None:
            with contextlib.suppress(queue.Full):
                self._outbox.put_nowait(Bye(reason))  # wakes the writer
        self.channel.close()

    # ------------------------------------------------------------ threads

    def _write_loop(self) -> None:
        assert self._outbox is not None
        while not self.closed:
            msg = self._outbox.get()
            if self.closed:
                return
            try:
                self.channel.send(msg)
            except Timeout:
                self.close(f"dropped: did not read for {self.gateway.send_timeout} s")
            except (TransportError, CodecError) as exc:
                self.close(f"send failed: {exc}")

    def run(self) -> None:
        handler = self.gateway.handler
        reason = "closed by server"
        try:
            if self.channel.codec.handshake:
                self._handshake()
            else:
                self.refusal = self.gateway.refusal(self.channel.conn, None)
            if self.refusal and handler.drives_kernel:
                log.warning("%s may not drive the path manager: %s", self, self.refusal)
            log.info("%s connected", self)
            handler.on_connect(self)
            self._serve(handler)
            reason = self._close_reason or "closed"
        except Disconnected as exc:
            reason = f"disconnected: {exc}"
        except Timeout as exc:
            reason = f"dropped: {exc}"
        except (FramingError, ProtocolError) as exc:
            reason = f"protocol error: {exc}"
            self._try_send(Error(f"{exc}; closing the session"))
        except TransportError as exc:
            reason = f"transport error: {exc}"
        except Exception:
            log.exception("%s: bug while serving", self)
            reason = "internal error"
        finally:
            if self._close_reason:
                reason = self._close_reason
            self.close(reason)
            try:
                handler.on_disconnect(self)
            except Exception:
                log.exception("%s: handler.on_disconnect failed", self)
            self.gateway._forget(self)
            log.info("%s %s", self, reason)

    def _serve(self, handler: BaseHandler) -> None:
        """The session protocol: Ping is answered and Bye ends the session here, so a
        handler that knows nothing of them cannot break ``client.ping`` or a
        lockstep barrier; the handler sees Reports and Commands only."""
        # Every round trip runs this loop once: locals, no property calls.
        recv, send = self.channel.recv, self.channel.send
        on_message: OnMessage = handler.on_message
        if self.refusal and handler.drives_kernel:
            on_message = self._refusing(on_message)
        is_closed, replies = self._closed.is_set, self.replies
        while not is_closed():
            try:
                msg = recv()
            except DecodeError as exc:
                log.warning("%s: bad message: %s", self, exc)
                self._try_send(Error(f"bad message: {exc}"))
                continue
            kind = type(msg)
            if kind is Ping:
                if replies:
                    send(Pong(msg.seq, msg.payload))  # type: ignore[attr-defined]
                continue
            if kind is Report or kind is Command:
                try:
                    reply = on_message(self, msg)
                except Exception as exc:
                    log.exception("%s: handler failed on %r", self, msg)
                    reply = Error(f"internal error handling {kind.__name__}: {exc}",
                                  getattr(msg, "request_id", 0))
            elif kind is Bye:
                reason = msg.reason  # type: ignore[attr-defined]
                self._close_reason = f"said bye ({reason})" if reason else "said bye"
                return
            else:
                reply = Error(f"unexpected {kind.__name__} from a client (a session carries "
                              "Ping, Report, Command and Bye)")
            if reply is not None and replies:
                send(reply)

    def _refusing(self, on_message: OnMessage) -> OnMessage:
        """``on_message`` for a peer that may not act on the kernel: Commands and
        Reports (which drive the policy) are refused, Pings still answered."""
        refusal = self.refusal

        def guarded(session: Session, msg: Message) -> Message | None:
            if isinstance(msg, Command):
                return Error(f"not allowed to run {msg.op!r}: {refusal}", msg.request_id)
            if isinstance(msg, Report):
                log.warning("%s: report ignored: %s", session, refusal)
                return Error(f"report ignored: {refusal}") if session.replies else None
            return on_message(session, msg)

        return guarded

    def _handshake(self) -> None:
        try:
            first = self.channel.recv(self.gateway.handshake_timeout)
        except (FramingError, DecodeError) as exc:
            raise RemoteProtocolError(
                f"could not read a Hello with framing {self.endpoint.framing} and codec "
                f"{self.endpoint.codec} ({exc}); do client and server use the same URL query?"
            ) from None
        if not isinstance(first, Hello):
            raise RemoteProtocolError(f"expected Hello first, got {type(first).__name__}")
        if first.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {first.version} not supported; this server speaks "
                f"version {PROTOCOL_VERSION}: upgrade the older side"
            )
        if (first.framing, first.codec) != (self.endpoint.framing, self.endpoint.codec):
            raise RemoteProtocolError(
                f"client uses framing {first.framing} / codec {first.codec}, this listener "
                f"uses {self.endpoint.framing} / {self.endpoint.codec}: use the server's URL"
            )
        self.name = first.name
        self.refusal = self.gateway.refusal(self.channel.conn, first)
        self.channel.send(Welcome(PROTOCOL_VERSION, self.id, self.gateway.name))

    def _try_send(self, msg: Message) -> None:
        if not self.replies or self.closed:
            return
        with contextlib.suppress(IpcgwError):
            self.channel.send(msg)


class BaseHandler:
    """What Reports and Commands mean: the default logs Reports and refuses Commands.

    Subclass and override ``on_message(session, msg)``: ``msg`` is a Report or a
    Command (the session answers Pings and handles Bye itself); return the
    reply or None. Called from the session's own thread, so a handler may block
    only that client.
    """

    #: Commands and Reports act on the kernel: only trusted peers may send them
    #: (the server's uid, --allow-uid/--allow-gid, or a TCP token; see Gateway).
    drives_kernel: ClassVar[bool] = False

    def on_connect(self, session: Session) -> None:
        """A client finished its handshake."""

    def on_message(self, session: Session, msg: Message) -> Message | None:
        if isinstance(msg, Report):
            log.info("%s report t=%.3f path=%d node=%d %s", session, msg.sim_time,
                     msg.path_id, msg.node_id, msg.metrics)
            return None
        if isinstance(msg, Command):
            if not msg.request_id:
                log.warning("%s: cannot execute %s %s (no backend)", session, msg.op, msg.args)
                return None
            return Error(f"cannot execute {msg.op!r}: this server has no path-manager "
                         "backend (start it with --handler mptcp)", msg.request_id)
        return Error(f"unexpected {type(msg).__name__} from a client")

    def on_disconnect(self, session: Session) -> None:
        """The session ended, for whatever reason."""

    def close(self) -> None:
        """The gateway is shutting down."""


class Gateway:
    """Listens on any number of URLs and serves every client with one handler."""

    def __init__(
        self,
        handler: BaseHandler | None = None,
        *,
        name: str = "ipcgw",
        send_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
        outbox_limit: int = 4096,
        frame_timeout: float | None = 10.0,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        allow_uids: Iterable[int] = (),
        allow_gids: Iterable[int] = (),
        token: str | None = None,
    ) -> None:
        self.handler = handler or BaseHandler()
        self.name = name
        self.send_timeout = send_timeout
        self.handshake_timeout = handshake_timeout
        self.outbox_limit = outbox_limit
        self.frame_timeout = frame_timeout
        self.max_clients = max_clients
        self.allow_uids = frozenset({os.geteuid(), *allow_uids})
        self.allow_gids = frozenset(allow_gids)
        self.token = token.encode() if token else None
        self.listeners: list[Listener] = []
        self._sessions: dict[int, Session] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closer = _LingeringClose()

    def refusal(self, conn: Connection, hello: Hello | None) -> str:
        """Why the peer behind ``conn`` may not drive the kernel, or "" if it may.

        Trusted: a peer whose uid the OS vouches for (SO_PEERCRED, the owner of
        the FIFO, queue or segment it made) and is the server's or allowed, or
        one in an allowed group, or one that presented the server's token.
        """
        token = hello.token.encode() if hello is not None and hello.token else b""
        if self.token is not None and token and hmac.compare_digest(token, self.token):
            return ""
        uid, gid = conn.peer_uid, conn.peer_gid
        if uid is not None and (uid in self.allow_uids or gid in self.allow_gids):
            return ""
        if token:
            return "wrong token (the server's --token-file)"
        if uid is None:
            return ("the transport cannot tell who the peer is: give the server a --token-file "
                    "and the client ?token=")
        return (f"peer uid {uid} is not the server's (uid {os.geteuid()}); start the server "
                f"with --allow-uid {uid} or --allow-gid {gid}")

    def listen(self, url: str | Endpoint) -> Endpoint:
        """Start serving ``url``; returns the endpoint actually bound (e.g. TCP port 0)."""
        endpoint = parse_url(url) if isinstance(url, str) else url
        if endpoint.scheme == "tcp" and self.handler.drives_kernel and self.token is None:
            host = endpoint.host_port[0]
            if not _is_loopback(host):
                raise ConnectError(
                    f"refusing to serve {endpoint}: anyone who reaches {host} could drive the path "
                    "manager; listen on 127.0.0.1, or give the server a --token-file")
        listener = listen_url(endpoint)
        self.listeners.append(listener)
        thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                  name=f"ipcgw-accept-{endpoint.scheme}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return listener.endpoint

    @property
    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def broadcast(self, msg: Message, sessions: Iterable[Session] | None = None) -> None:
        for session in self.sessions if sessions is None else sessions:
            session.post(msg)

    def serve_forever(self) -> None:
        """Block until stop() (e.g. from a signal handler)."""
        while not self._stopped.wait(0.5):
            pass

    def stop(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        """Stop listening, end every session, remove every OS object created."""
        self._stopped.set()
        for listener in self.listeners:
            try:
                listener.close()
            except Exception:
                log.exception("closing %s failed", listener.endpoint)
        for session in self.sessions:
            session._try_send(Bye("server shutting down"))
            session.close("server shutting down")
        self._closer.close_all()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.handler.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self, listener: Listener) -> None:
        while not self._stopped.is_set():
            try:
                conn = listener.accept()
            except ListenerClosed:
                return
            except Exception as exc:
                if self._stopped.is_set():
                    return
                log.warning("accept on %s failed: %s", listener.endpoint, exc)
                self._stopped.wait(0.05)
                continue
            with self._lock:
                served = sum(1 for s in self._sessions.values() if s.endpoint is listener.endpoint)
            if served >= self.max_clients:
                self._refuse(conn, listener.endpoint)
                continue
            session = Session(self, conn, listener.endpoint, next(self._ids))
            with self._lock:
                self._sessions[session.id] = session
            threading.Thread(target=session.run, name=f"ipcgw-s{session.id}",
                             daemon=True).start()

    def _refuse(self, conn: Connection, endpoint: Endpoint) -> None:
        """One client too many: tell it why (bounded wait), close it, serve the others."""
        reason = (f"server busy: {self.max_clients} clients already on {endpoint.scheme} "
                  "(server option --max-clients)")
        log.warning("refused a client on %s: %s", endpoint, reason)
        conn.send_timeout = 0.5
        try:
            channel = Channel(conn, endpoint)
            if channel.codec.replies:
                channel.send(Error(reason))
        except IpcgwError:
            conn.close()
            return
        self._closer.later(conn)

    def _forget(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

class _LingeringClose:
    """Closes refused connections a moment after their Error was written: a queue
    transport's client is still finishing its connect when the server refuses it,
    and an immediate close would remove the queue the reason waits in. One thread
    for all of them, a bounded number waiting; past that, close at once."""

    LINGER = 1.0
    MAX_WAITING = 64

    def __init__(self) -> None:
        self._due: queue.Queue[tuple[float, Connection]] = queue.Queue(self.MAX_WAITING)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def later(self, conn: Connection) -> None:
        try:
            self._due.put_nowait((time.monotonic() + self.LINGER, conn))
        except queue.Full:
            conn.close()
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ipcgw-refused", daemon=True)
                self._thread.start()

    def close_all(self) -> None:
        """At shutdown: nothing may outlive the server (a queue, a FIFO pair)."""
        while True:
            try:
                _, conn = self._due.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self) -> None:
        while True:
            due, conn = self._due.get()
            time.sleep(max(0.0, due - time.monotonic()))
            with contextlib.suppress(Exception):
                conn.close()
