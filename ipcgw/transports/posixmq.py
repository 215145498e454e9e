"""POSIX message queues: ``posixmq:///NAME``.

Features
========
- ``/NAME`` is only the rendezvous. A client creates its own pair
  ``/NAME.<pid>.<n>.up`` (client→server) and ``/NAME.<pid>.<n>.down``
  (server→client), then sends a hello (pid, connect deadline, id) to ``/NAME``.
  The server opens both and unlinks their names at once: from then on the
  kernel frees the queues when both processes have closed them, however they
  end, so nothing is left to reclaim and ``/dev/mqueue`` holds only ``NAME``.
  A client that stops reading fills only its own ``down`` queue.
- Bytes travel as chunks of at most ``msgsize`` per message at priority 2, one
  ``mq_timedsend``/``mq_timedreceive`` per chunk. Markers are zero-length
  messages: END (priority 1, after all data), WAKE (priority 0, only read when
  nothing else is queued) and RESET (priority 3, read first).
- Waits are timed calls of at most 0.5 s, after which the pid of the peer is
  checked: a ``kill -9`` is seen within about 0.5 s, at no cost on the hot
  path. ``close()`` sends END (waiting up to 1 s for room; else it discards
  the oldest queued chunk and sends RESET) and a WAKE into its own queue to
  release a reader blocked in another thread.
- ``ServerLock("posixmq", NAME)``; a new server unlinks a stale ``/NAME``
  (and, when ``/dev/mqueue`` is mounted, any ``NAME.*`` a client left in the
  instant between creating its queues and saying hello).
- Crosses network namespaces (queues belong to the IPC namespace).

Limits: ``msgsize_max`` 8192 bytes per message, ``msg_max`` 10 messages per
queue, and ``RLIMIT_MSGQUEUE`` (819200 bytes per user) charging each queue
about ``maxmsg * (msgsize + 96)`` bytes. With the defaults below a client
costs about 66 KB, so some twelve clients of one user fit; beyond that
``connect`` fails naming the limit. Tune per client with ``?maxmsg=&msgsize=``.

URL
===
``posixmq:///ipcgw`` (one path component); ``?maxmsg=4&msgsize=8192`` size the
client's queues; ``?mode=0600`` sets their permissions.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import threading
import time
from typing import ClassVar

import posix_ipc

from ipcgw.errors import ConnectError, Disconnected, TransportError
from ipcgw.transports._mq import (
    DATA,
    END,
    PEER_CHECK,
    RESET,
    WAKE,
    MqConnection,
    lock_owner,
    next_client_id,
    pack_hello,
    unpack_hello,
)
from ipcgw.transports.base import (
    Buffer,
    Connection,
    Listener,
    ListenerClosed,
    ServerLock,
    Transport,
    call_holding_signals,
    pid_alive,
    remaining,
)
from ipcgw.url import Endpoint

__all__ = ["PosixMqTransport"]

_P_WAKE, _P_END, _P_DATA, _P_RESET = 0, 1, 2, 3
_P_HELLO = 1
_KINDS = {_P_WAKE: WAKE, _P_END: END, _P_DATA: DATA, _P_RESET: RESET}
_RENDEZVOUS_MSGSIZE = 256
_DEFAULT_MAXMSG, _DEFAULT_MSGSIZE = 4, 8192
_CID = re.compile(r"[0-9]+\.[0-9]+")
_MQ = posix_ipc.MessageQueue


def _sysctl(name: str, default: int) -> int:
    try:
        with open(f"/proc/sys/fs/mqueue/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def _name(endpoint: Endpoint) -> str:
    name = endpoint.address
    if not re.fullmatch(r"/[^/]{1,200}", name):
        raise ValueError(f"posixmq URL needs one name, e.g. posixmq:///ipcgw; got {name!r}")
    return name


def _unlink(name: str) -> None:
    with contextlib.suppress(posix_ipc.Error):
        posix_ipc.unlink_message_queue(name)


def _close(q: posix_ipc.MessageQueue) -> None:
    with contextlib.suppress(posix_ipc.Error):
        q.close()


def _poke(q: posix_ipc.MessageQueue, priority: int) -> None:
    with contextlib.suppress(posix_ipc.Error):
        q.send(b"", 0, priority)


class PosixMqConnection(MqConnection):
    def __init__(self, rq: posix_ipc.MessageQueue, wq: posix_ipc.MessageQueue, peer_pid: int,
                 peer: str, listener: PosixMqListener | None = None) -> None:
        super().__init__(peer_pid, wq.max_message_size, peer)
        self._rq, self._wq = rq, wq
        self._listener = listener

    def _get(self, deadline: float | None) -> tuple[bytes, str] | None:
        wait = PEER_CHECK if deadline is None else min(PEER_CHECK, remaining(deadline) or 0.0)
        try:
            payload, priority = call_holding_signals(self._rq.receive, wait)
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            return None
        except posix_ipc.ExistentialError:
            if self._closed:
                return None
            raise Disconnected("connection closed") from None
        return payload, _KINDS.get(priority, DATA)

    def _put(self, chunk: Buffer, deadline: float | None) -> None:
        while True:
            wait = PEER_CHECK if deadline is None else min(PEER_CHECK, remaining(deadline) or 0.0)
            try:
                call_holding_signals(self._wq.send, chunk, wait, _P_DATA)
                return
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass
            except posix_ipc.ExistentialError:
                raise Disconnected("connection closed") from None
            if self._closed:
                raise Disconnected("connection closed")
            self.check(deadline)

    def close(self, grace: float = 1.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self.peer_alive() and not self._eof:
            try:
                self._wq.send(b"", grace, _P_END)
            except posix_ipc.BusyError:  # peer not reading: make room, then reset
                with contextlib.suppress(posix_ipc.Error):
                    self._wq.receive(0)
                    self._wq.send(b"", 0, _P_RESET)
            except posix_ipc.Error:
                pass
        _poke(self._rq, _P_WAKE)  # a reader blocked in another thread
        _close(self._rq)
        _close(self._wq)
        if self._listener is not None:
            self._listener.forget(self)


class PosixMqListener(Listener):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.name = _name(endpoint)
        self._lock = ServerLock("posixmq", self.name)
        self._lock.acquire()
        self._conns: set[PosixMqConnection] = set()
        self._mutex = threading.Lock()
        self._closed = False
        try:
            self._reclaim()
            self._rq = _MQ(self.name, posix_ipc.O_CREX, endpoint.mode,
                           max_messages=min(10, _sysctl("msg_max", 10)),
                           max_message_size=_RENDEZVOUS_MSGSIZE)
        except BaseException:
            self._lock.release()
            raise

    def _reclaim(self) -> None:
        """We hold the lock: a queue under this name is a crashed server's."""
        _unlink(self.name)
        if os.path.ismount("/dev/mqueue"):
            prefix = self.name[1:] + "."
            for entry in os.listdir("/dev/mqueue"):
                if entry.startswith(prefix):
                    _unlink("/" + entry)

    def forget(self, conn: PosixMqConnection) -> None:
        with self._mutex:
            self._conns.discard(conn)

    def accept(self) -> Connection:
        while True:
            if self._closed:
                raise ListenerClosed("listener closed")
            try:
                payload, priority = self._rq.receive()  # unbounded: never hold signals here
            except posix_ipc.SignalError:
                continue
            except posix_ipc.ExistentialError:
                if self._closed:
                    raise ListenerClosed("listener closed") from None
                raise TransportError(f"rendezvous queue {self.name} is gone") from None
            if self._closed:
                raise ListenerClosed("listener closed")
            hello = unpack_hello(payload)
            if hello is None or priority != _P_HELLO:
                continue
            cid = hello.text.decode("ascii", "replace")
            if not _CID.fullmatch(cid):
                continue
            up_name, down_name = f"{self.name}.{cid}.up", f"{self.name}.{cid}.down"
            if (hello.a and time.monotonic_ns() >= hello.a) or not pid_alive(hello.pid):
                _unlink(up_name)  # the client gave up or died; it may not have cleaned
                _unlink(down_name)
                continue
            try:
                up = _MQ(up_name)
                try:
                    down = _MQ(down_name)
                except posix_ipc.Error:
                    _close(up)
                    raise
            except posix_ipc.Error:
                continue
            _unlink(up_name)
            _unlink(down_name)
            try:
                down.send(pack_hello(os.getpid()), 0, _P_HELLO)
            except posix_ipc.Error:
                _close(up)
                _close(down)
                continue
            conn = PosixMqConnection(up, down, hello.pid, f"posixmq client pid {hello.pid}",
                                     self)
            with self._mutex:
                if self._closed:
                    conn.close(0)
                    raise ListenerClosed("listener closed")
                self._conns.add(conn)
            return conn

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
        _poke(self._rq, _P_WAKE)  # a blocked accept()
        _unlink(self.name)
        _close(self._rq)
        for conn in conns:
            conn.close(0)
        self._lock.release()


def _limit_error(where: str, exc: Exception, maxmsg: int, msgsize: int) -> ConnectError:
    per_queue = maxmsg * (msgsize + 96)
    limit = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0]
    fit = "unlimited" if limit == resource.RLIM_INFINITY else str(limit // (2 * per_queue))
    return ConnectError(
        f"{where}: cannot create this client's two queues ({exc}). Each costs about "
        f"{per_queue} bytes of RLIMIT_MSGQUEUE ({limit} bytes per user, so about {fit} "
        f"clients fit) and fs.mqueue.queues_max={_sysctl('queues_max', 256)} caps the count: "
        "too many clients or queues for this user. Close some, use smaller queues "
        "(?maxmsg=2 or ?msgsize=4096), or raise the limit (ulimit -q)."
    )


class PosixMqTransport(Transport):
    scheme: ClassVar[str] = "posixmq"
    crosses_netns: ClassVar[bool] = True
    message_boundaries: ClassVar[bool] = True
    max_message_size: ClassVar[int | None] = 8192

    @classmethod
    def listen(cls, endpoint: Endpoint) -> Listener:
        return PosixMqListener(endpoint)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        name = _name(endpoint)
        where = f"posixmq://{name}"
        deadline = time.monotonic() + timeout
        maxmsg = int(endpoint.params.get("maxmsg", _DEFAULT_MAXMSG))
        msgsize = int(endpoint.params.get("msgsize", _DEFAULT_MSGSIZE))
        if not (1 <= maxmsg <= _sysctl("msg_max", 10)
                and 1 <= msgsize <= _sysctl("msgsize_max", 8192)):
            raise ValueError(f"{where}: maxmsg must be 1..fs.mqueue.msg_max and msgsize "
                             "1..fs.mqueue.msgsize_max")
        try:
            rz = _MQ(name, read=False)
        except posix_ipc.ExistentialError:
            raise ConnectError(f"no server at {where}: no such message queue (is `ipcgw serve` "
                               "running, in this IPC namespace?)") from None
        except posix_ipc.PermissionsError as e:
            raise ConnectError(f"cannot open {where}: {e}") from None
        created: list[posix_ipc.MessageQueue] = []
        cid = next_client_id()
        names = f"{name}.{cid}.up", f"{name}.{cid}.down"
        try:
            lock = ServerLock("posixmq", name)
            owner = lock_owner(lock)
            if owner is None:
                raise ConnectError(f"no server at {where}: the queue is stale (no live server "
                                   f"holds {lock.path}); a new server reclaims it")
            for n in names:
                _unlink(n)  # a leftover of a dead process that had our pid
                try:
                    created.append(_MQ(n, posix_ipc.O_CREX, endpoint.mode, max_messages=maxmsg,
                                       max_message_size=msgsize))
                except (OSError, posix_ipc.Error) as e:
                    raise _limit_error(where, e, maxmsg, msgsize) from None
            up, down = created
            hello = pack_hello(os.getpid(), int(deadline * 1e9), text=cid.encode())
            try:
                rz.send(hello, remaining(deadline), _P_HELLO)
            except posix_ipc.BusyError:
                raise ConnectError(f"{where}: rendezvous queue full, server pid {owner} is not "
                                   "accepting") from None
            while True:
                try:
                    payload, _ = call_holding_signals(
                        down.receive, min(PEER_CHECK, remaining(deadline) or 0.0))
                    break
                except (posix_ipc.BusyError, posix_ipc.SignalError):
                    pass
                if not pid_alive(owner):
                    raise ConnectError(f"{where}: server pid {owner} died during connect")
                if remaining(deadline) == 0:
                    raise ConnectError(f"{where}: server pid {owner} did not answer within "
                                       f"{timeout:g} s")
            welcome = unpack_hello(payload)
            if welcome is None or welcome.status:
                text = welcome.text.decode(errors="replace") if welcome else "bad welcome"
                raise ConnectError(f"{where} refused: {text}")
        except BaseException:
            if created:  # a server that opened them anyway drops the session
                _poke(created[0], _P_RESET)
            for n in names:
                _unlink(n)
            for q in created:
                _close(q)
            raise
        finally:
            _close(rz)
        for n in names:
            _unlink(n)
        return PosixMqConnection(down, up, welcome.pid, f"posixmq server pid {welcome.pid}")
