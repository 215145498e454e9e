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
  path. ``close()`` sends END (waiting up to 1 s for room; else it empties
  the queue, whose data nobody reads, and sends RESET) and a WAKE into its
  own queue to release a reader blocked in another thread.
- A peer that closes leaves END (or RESET) in the other's read queue, but
  closing a queue wakes no sender: a sender blocked for a whole slice on a
  peer that lives on takes the next message of its own read queue (kept in
  order for ``recv``) and gives up with ``Disconnected`` once it is the
  peer's END or RESET, so a client whose server dropped it never hangs. It
  never takes from a full queue: that would feed a peer blocked on it (a
  client that never reads would trickle on past the server's send_timeout),
  and a closing peer leaves its queue with room.
- The server's welcome goes above data priority, so a refusal's Error sent
  right after it cannot overtake it.
- ``ServerLock("posixmq", NAME)``; a new server unlinks a stale ``/NAME``
  (and, when ``/dev/mqueue`` is mounted, any ``NAME.*`` a client left in the
  instant between creating its queues and saying hello). A serving server
  checks every second that ``/NAME`` is still its queue and recreates it when
  someone removed it (``rm /dev/mqueue/NAME``), logging one line.
- Peer identity: ``peer_uid``/``peer_gid`` are the owner of the client's
  queues (``fstat`` of the descriptors), which the kernel sets at creation and
  a user cannot give away; unknown (None) when ``?mode=`` lets group or others
  write them, since anyone could then have written into the session.
- ``?mode=`` is applied exactly (``fchmod`` after creation: ``mq_open`` would
  apply the umask, unlike what fifo, unix and sysv do).
- Crosses network namespaces (queues belong to the IPC namespace).

Limits: ``msgsize_max`` 8192 bytes per message, ``msg_max`` 10 messages per
queue, and ``RLIMIT_MSGQUEUE`` (819200 bytes per user) charging each queue
about ``maxmsg * (msgsize + 96)`` bytes. With the defaults below a client
costs about 66 KB, so some twelve clients of one user fit; beyond that
``connect`` fails naming the limit. Tune per client with ``?maxmsg=&msgsize=``.

URL
===
``posixmq:///ipcgw`` (one path component); ``?maxmsg=4&msgsize=8192`` size the
client's queues (``maxmsg`` at least 2); ``?mode=0600`` sets their permissions.
"""

from __future__ import annotations

import collections
import contextlib
import logging
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
    UNKNOWN_OWNER,
    WAKE,
    MqConnection,
    lock_owner,
    next_client_id,
    pack_hello,
    read_welcome,
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

log = logging.getLogger(__name__)

_P_WAKE, _P_END, _P_DATA, _P_RESET = 0, 1, 2, 3
_P_HELLO = 1  # client → server, on the rendezvous queue
#: The server's welcome travels above data: the Error of a refused client may
#: follow it at once, and a queue hands out its highest priority first.
_P_WELCOME = _P_RESET
_KINDS = {_P_WAKE: WAKE, _P_END: END, _P_DATA: DATA, _P_RESET: RESET}
_RENDEZVOUS_MSGSIZE = 256
_DEFAULT_MAXMSG, _DEFAULT_MSGSIZE = 4, 8192
#: Messages a blocked sender may set aside while looking for the peer's END.
_STASH_MAX = 64
#: How often accept() checks that /NAME is still our rendezvous (#22: rm /dev/mqueue/NAME).
_HEAL_CHECK = 1.0
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


def _create(name: str, mode: int, maxmsg: int, msgsize: int) -> posix_ipc.MessageQueue:
    """A new queue with exactly ``mode``: mq_open applies the umask (0660 became 0640)."""
    q = _MQ(name, posix_ipc.O_CREX, mode, max_messages=maxmsg, max_message_size=msgsize)
    try:
        os.fchmod(q.mqd, mode)
    except OSError:
        _unlink(name)
        q.close()
        raise
    return q


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
        # What a blocked sender took off our read queue while looking for the
        # peer's END or RESET, in order, for recv to return first.
        self._stash: collections.deque[tuple[bytes, str]] = collections.deque()
        self._reading = threading.Lock()
        self._peer_ended = False

    def _get(self, deadline: float | None) -> tuple[bytes, str] | None:
        if self._stash:
            return self._stash.popleft()
        wait = PEER_CHECK if deadline is None else min(PEER_CHECK, remaining(deadline) or 0.0)
        with self._reading:
            if self._stash:
                return self._stash.popleft()
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
            if self._peer_closed():
                raise Disconnected(f"{self.peer} closed or dropped the connection while we were "
                                   "sending (it reads no more)")

    def _peer_closed(self) -> bool:
        """Has the peer ended the session while it lives on (a server that dropped us)?

        Its queues have no EOF and closing them wakes no sender, but the peer
        leaves END or RESET in our read queue when it closes. Only a sender
        blocked for a whole slice looks, and only when no reader is at it
        (that reader then sees the marker itself): it takes the next message,
        keeps it for recv in order, and tells whether it was the peer's end.
        """
        if self._peer_ended or len(self._stash) >= _STASH_MAX:
            return self._peer_ended
        if not self._reading.acquire(blocking=False):
            return False
        try:
            if self._rq.current_messages >= self._rq.max_messages:
                # A full queue may hold back a peer blocked sending to us: taking
                # from it would feed a client that never reads at one chunk per
                # slice and keep the server's send_timeout from firing. A peer
                # that ends leaves room (see close), so a full queue is no end.
                return False
            payload, priority = self._rq.receive(0)
            kind = _KINDS.get(priority, DATA)
            self._stash.append((payload, kind))
            self._peer_ended = kind in (END, RESET)
        except posix_ipc.Error:
            pass
        finally:
            self._reading.release()
        return self._peer_ended

    def close(self, grace: float = 1.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self.peer_alive() and not self._eof:
            try:
                self._wq.send(b"", grace, _P_END)
            except posix_ipc.BusyError:  # peer not reading: its data is lost; reset
                with contextlib.suppress(posix_ipc.Error):
                    while True:  # empty it, so a sender blocked there sees room and looks
                        self._wq.receive(0)
                _poke(self._wq, _P_RESET)
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
        self._replaced = False
        self._next_heal = time.monotonic() + _HEAL_CHECK
        try:
            self._reclaim()
            self._rq = self._create_rendezvous()
        except BaseException:
            self._lock.release()
            raise

    def _create_rendezvous(self) -> posix_ipc.MessageQueue:
        return _create(self.name, self.endpoint.mode, min(10, _sysctl("msg_max", 10)),
                       _RENDEZVOUS_MSGSIZE)

    def _heal(self) -> None:
        """#22: a removed /NAME (``rm /dev/mqueue/NAME``) leaves our queue working but
        unreachable. We hold the ServerLock, so a missing name is ours to recreate;
        a different queue at the name was put there by someone allowed to unlink
        ours (root): it is left alone, said once."""
        try:
            q = _MQ(self.name, read=True, write=False)
        except posix_ipc.ExistentialError:
            q = None
        except posix_ipc.Error:
            return
        if q is not None:
            same = os.fstat(q.mqd).st_ino == os.fstat(self._rq.mqd).st_ino
            if not same and not self._replaced:
                log.warning("posixmq rendezvous %s was replaced by a queue of uid %d; new "
                            "clients go there, not here", self.name, os.fstat(q.mqd).st_uid)
                self._replaced = True
            _close(q)
            return
        try:
            new = self._create_rendezvous()
        except (posix_ipc.Error, OSError) as exc:
            log.warning("posixmq rendezvous %s was removed and cannot be recreated: %s",
                        self.name, exc)
            return
        old, self._rq = self._rq, new
        log.warning("posixmq rendezvous %s was removed (rm /dev/mqueue%s?); recreated it",
                    self.name, self.name)
        with contextlib.suppress(posix_ipc.Error):  # hellos that reached the old one
            while True:
                payload, priority = old.receive(0)
                new.send(payload, 0, priority)
        _close(old)

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
            if time.monotonic() >= self._next_heal:
                self._next_heal = time.monotonic() + _HEAL_CHECK
                self._heal()
            try:  # not holding signals: this may run in the main thread for a whole slice
                payload, priority = self._rq.receive(_HEAL_CHECK)
            except (posix_ipc.BusyError, posix_ipc.SignalError):
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
                down.send(pack_hello(os.getpid()), 0, _P_WELCOME)
            except posix_ipc.Error:
                _close(up)
                _close(down)
                continue
            conn = PosixMqConnection(up, down, hello.pid, f"posixmq client pid {hello.pid}",
                                     self)
            conn.peer_uid, conn.peer_gid = _owner(up, down)
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


def _owner(up: posix_ipc.MessageQueue, down: posix_ipc.MessageQueue) -> tuple[int | None, int | None]:
    """Who created the client's queues: the owner the kernel gave them (a user cannot
    chown a queue to someone else). Only trustworthy when nobody else could write
    them (no group/other write bits): otherwise (None, None), unknown."""
    a, b = os.fstat(up.mqd), os.fstat(down.mqd)
    if (a.st_mode | b.st_mode) & 0o022 or (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
        return None, None
    return a.st_uid, a.st_gid


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
        if not (2 <= maxmsg <= _sysctl("msg_max", 10)
                and 1 <= msgsize <= _sysctl("msgsize_max", 8192)):
            # 2: a queue of one message, full, cannot tell a peer's RESET from its data
            raise ValueError(f"{where}: maxmsg must be 2..fs.mqueue.msg_max and msgsize "
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
            owner = lock_owner("posixmq", name, os.fstat(rz.mqd).st_uid)
            if owner is None:
                raise ConnectError(f"no server at {where}: the queue is stale (no live server "
                                   f"holds {ServerLock('posixmq', name).path}); a new server "
                                   "reclaims it")
            server = f"server pid {owner}" if owner != UNKNOWN_OWNER else "the server"
            for n in names:
                _unlink(n)  # a leftover of a dead process that had our pid
                try:
                    created.append(_create(n, endpoint.mode, maxmsg, msgsize))
                except (OSError, posix_ipc.Error) as e:
                    raise _limit_error(where, e, maxmsg, msgsize) from None
            up, down = created
            hello = pack_hello(os.getpid(), int(deadline * 1e9), text=cid.encode())
            try:
                rz.send(hello, remaining(deadline), _P_HELLO)
            except posix_ipc.BusyError:
                raise ConnectError(f"{where}: rendezvous queue full, {server} is not "
                                   "accepting") from None
            while True:
                try:
                    payload, _ = call_holding_signals(
                        down.receive, min(PEER_CHECK, remaining(deadline) or 0.0))
                    break
                except (posix_ipc.BusyError, posix_ipc.SignalError):
                    pass
                if owner != UNKNOWN_OWNER and not pid_alive(owner):
                    raise ConnectError(f"{where}: {server} died during connect")
                if remaining(deadline) == 0:
                    raise ConnectError(f"{where}: {server} did not answer within {timeout:g} s")
            welcome = read_welcome(payload, where)
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
