"""System V message queues: ``sysv://KEY``.

Features
========
- The queue at KEY is only the rendezvous, and carries only hellos (type 1):
  the server takes every message off it and drops whatever is not a hello, so
  junk of any type cannot fill it for good. A client creates its own ``down``
  queue (server→client) under a random key, puts a random nonce in it (type
  ``_T_AUTH``) and sends a hello naming the key, the queue id and the nonce.
  The server opens ``down``, takes the nonce out and compares: a hello naming
  a queue its sender did not fill is refused (the nonce goes back), so nobody
  can bind a session to another client's queue. Only then does the server
  create ``up`` (client→server, owned by the client's uid so it may write) and
  put its welcome into ``down``. A rogue hello costs the server a few
  non-blocking syscalls and no queue; sessions are capped by the gateway.
- Peer identity: ``peer_uid``/``peer_gid`` are the creator (``msg_perm.cuid``,
  ``cgid``) of ``down``, which the kernel sets and nobody can change, and the
  nonce shows the hello came from whoever filled that queue. Trustworthy as
  long as no one else may write the session queues: when ``?mode=`` grants
  write to group or others, anyone could plant a nonce or inject data, and
  the peer is reported as unknown (None).
- Bytes travel as chunks of at most ``msgmax`` (8 KiB) per message, one
  ``msgsnd``/``msgrcv`` per chunk, type 1. Markers are zero-length messages:
  END (type 2, orderly close) and WAKE (type 3). Readers take the lowest type
  first (``msgtyp=-3``), so data always comes before END and WAKE. A zero-byte
  message fits even into a full queue (the ``msgmnb`` limit counts bytes), so
  END and WAKE are never refused.
- SysV has neither timed receive nor an fd to poll: one watchdog thread per
  process watches the calls that actually block (the non-blocking first try
  takes no lock and wakes no thread). When a blocked reader's deadline passes
  or its peer's pid disappears it injects a WAKE into that reader's queue; a
  blocked sender is released by removing the queue it writes to (the session
  is over anyway). Peer pids are checked every 0.5 s, so a ``kill -9`` is
  seen within about 0.5 to 1 s. Cost on the hot path when the reader has to
  block: one failed non-blocking ``msgrcv`` plus a dict insert/delete.
- ``close()`` sends END and wakes its own reader. The server removes ``up``
  at once (a client blocked sending gets ``Disconnected`` at once) and
  ``down`` when the client has drained it, died, or after 30 s; a client
  removes its own ``down`` when it closes. ``Listener.close()`` removes every
  queue at once.
- Crash recovery: ``ServerLock("sysv", KEY)``; the key and id of every queue
  of a session (and of the rendezvous) are listed in a record file next to
  the lock, in the server's private :func:`run_dir`. A new server removes
  what a crashed one recorded, but only a queue whose id is still the one
  recorded: a key reused meanwhile by another program is left alone, and a
  rendezvous key held by a queue ipcgw did not create is refused.
- Crosses network namespaces (queues belong to the IPC namespace).

Limits: ``msgmax`` 8192 bytes per message and ``msgmnb`` 16384 bytes per
queue (so a sender runs at most two full chunks ahead), ``msgmni`` queues
system-wide; raising them needs CAP_SYS_RESOURCE.

URL
===
``sysv://0x1c0ffee`` or ``sysv://29425646`` (not 0, which is IPC_PRIVATE);
``?mode=0600`` sets the permissions of the rendezvous (who may connect) and of
a client's ``down`` queue; ``up`` is 0600, owned by the client.
"""

from __future__ import annotations

import contextlib
import glob
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import ClassVar

import sysv_ipc

from ipcgw.errors import ConnectError, Disconnected, Timeout, TransportError
from ipcgw.transports._mq import (
    DATA,
    END,
    PEER_CHECK,
    UNKNOWN_OWNER,
    WAKE,
    MqConnection,
    lock_owner,
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
    deadline_after,
    open_private,
    pid_alive,
    remaining,
)
from ipcgw.url import Endpoint

__all__ = ["SysvTransport"]

log = logging.getLogger(__name__)

_T_HELLO = 1
#: In a client's ``down`` queue, above the types readers take (<= _T_WAKE), so
#: neither is ever read as data: the server's answer, and the client's nonce.
_T_WELCOME, _T_AUTH = 4, 5
_NONCE = 16
_T_DATA, _T_END, _T_WAKE = 1, 2, 3
_KINDS = {_T_DATA: DATA, _T_END: END, _T_WAKE: WAKE}
_DRAIN_GRACE = 30.0
#: A removed queue: EIDRM while blocked, EINVAL (a bare OSError) once its id is gone.
_GONE = (sysv_ipc.ExistentialError, OSError)


def _msgmax() -> int:
    try:
        with open("/proc/sys/kernel/msgmax") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 8192


MSGMAX = _msgmax()


def parse_key(address: str) -> int:
    """``0x…`` or decimal, as ``ipcs`` prints them; stored as a signed key_t."""
    try:
        key = int(address, 0)
    except ValueError:
        raise ValueError(f"sysv URL needs a numeric key (0x.. or decimal): {address!r}") from None
    if key == 0 or not -(2**31) <= key < 2**32:
        raise ValueError(f"sysv key must be a non-zero 32-bit number, got {address!r}")
    return key - 2**32 if key >= 2**31 else key


def _hex(key: int) -> str:
    return f"{key & 0xFFFFFFFF:#x}"


def _remove(q: sysv_ipc.MessageQueue) -> None:
    with contextlib.suppress(sysv_ipc.ExistentialError, sysv_ipc.PermissionsError, OSError):
        q.remove()


def _poke(q: sysv_ipc.MessageQueue, mtype: int) -> None:
    """A zero-length message: fits even a full queue, wakes its blocked reader."""
    with contextlib.suppress(sysv_ipc.Error, OSError):
        q.send(b"", block=False, type=mtype)


class _Watch:
    __slots__ = ("deadline", "fire", "fired", "pid", "poll")

    def __init__(self, deadline: float | None, pid: int, fire: Callable[[str], None],
                 poll: Callable[[], bool] | None) -> None:
        self.deadline, self.pid, self.fire, self.poll = deadline, pid, fire, poll
        self.fired: str | None = None


class _Watchdog:
    """One thread ending SysV waits that the kernel would let run forever.

    Registration only notifies the thread when it moves the next wake-up
    earlier, so a blocked ``recv(None)`` costs no thread hand-off.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[_Watch] = set()
        self._wake_at = float("inf")
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float | None, pid: int, fire: Callable[[str], None],
              poll: Callable[[], bool] | None = None) -> _Watch:
        w = _Watch(deadline, pid, fire, poll)
        with self._cond:
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ipcgw-sysv-watchdog",
                                                daemon=True)
                self._thread.start()
            elif deadline is not None and deadline < self._wake_at:
                self._cond.notify()
        return w

    def unwatch(self, w: _Watch) -> str | None:
        """Stop watching; returns why it fired if it did (its action is complete)."""
        with self._cond:
            self._watches.discard(w)
            return w.fired

    def _run(self) -> None:
        next_check = time.monotonic() + PEER_CHECK
        with self._cond:
            while True:
                now = time.monotonic()
                checking = now >= next_check
                if checking:
                    next_check = now + PEER_CHECK
                for w in list(self._watches):
                    reason = None
                    if w.deadline is not None and now >= w.deadline:
                        reason = "timeout"
                    elif checking and not pid_alive(w.pid):
                        reason = "dead"
                    elif checking and w.poll is not None and w.poll():
                        reason = "done"
                    if reason:
                        self._watches.discard(w)
                        w.fired = reason
                        with contextlib.suppress(Exception):  # the thread must survive
                            w.fire(reason)
                deadlines = [w.deadline for w in self._watches if w.deadline is not None]
                self._wake_at = min([next_check, *deadlines])
                self._cond.wait(max(0.0, self._wake_at - time.monotonic()))


_watchdog = _Watchdog()


def _reset_after_fork() -> None:
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_reset_after_fork)


def _queue(key: int, flags: int = 0, mode: int = 0o600) -> sysv_ipc.MessageQueue:
    return sysv_ipc.MessageQueue(key, flags, mode, max_message_size=MSGMAX)


def _create_random(mode: int, avoid: int) -> sysv_ipc.MessageQueue:
    """A new queue under a fresh random key (IPC_CREX: never one that exists)."""
    while True:
        key = secrets.randbelow(2**31 - 2) + 1
        if key == avoid:
            continue
        try:
            return _queue(key, sysv_ipc.IPC_CREX, mode)
        except sysv_ipc.ExistentialError:  # EEXIST: key taken, draw again
            continue


def _remove_if_same(key: int, qid: int) -> None:
    """Remove the queue at ``key`` only if it is still the one with id ``qid``: ids
    change with every creation, so a key reused by another program is left alone."""
    with contextlib.suppress(sysv_ipc.Error, OSError):
        q = sysv_ipc.MessageQueue(key)
        if q.id == qid:
            q.remove()


class SysvConnection(MqConnection):
    def __init__(self, rq: sysv_ipc.MessageQueue, wq: sysv_ipc.MessageQueue, peer_pid: int,
                 peer: str, listener: SysvListener | None = None) -> None:
        super().__init__(peer_pid, MSGMAX, peer)
        self._rq, self._wq = rq, wq
        self._listener = listener

    def _get(self, deadline: float | None) -> tuple[bytes, str] | None:
        rq = self._rq
        try:
            try:
                payload, mtype = rq.receive(block=False, type=-_T_WAKE)
            except sysv_ipc.BusyError:
                w = _watchdog.watch(deadline, self.peer_pid, lambda _: _poke(rq, _T_WAKE))
                try:
                    payload, mtype = rq.receive(type=-_T_WAKE)
                finally:
                    _watchdog.unwatch(w)
        except _GONE:
            if self._closed:
                return None
            raise Disconnected(f"{self.peer}: queue removed (peer closed or dropped us)") from None
        except sysv_ipc.Error:  # EINTR: let the caller re-check and retry
            return None
        return payload, _KINDS[mtype]

    def _put(self, chunk: Buffer, deadline: float | None) -> None:
        wq = self._wq
        try:
            try:
                wq.send(chunk, block=False, type=_T_DATA)
                return
            except sysv_ipc.BusyError:
                pass
            while True:
                # Only removing the queue can release a blocked msgsnd; the
                # watchdog does that on timeout or a dead peer.
                w = _watchdog.watch(deadline, self.peer_pid, lambda _: _remove(wq))
                try:
                    wq.send(chunk, type=_T_DATA)
                    return
                except _GONE:
                    fired = _watchdog.unwatch(w)
                    if fired == "timeout":
                        raise Timeout(f"{self.peer} did not read in time; dropped") from None
                    raise
                except sysv_ipc.BusyError:
                    pass
                except sysv_ipc.Error:  # EINTR
                    pass
                finally:
                    _watchdog.unwatch(w)
                if self._closed:
                    raise Disconnected("connection closed")
                self.check(deadline)
        except _GONE:
            raise Disconnected(f"{self.peer}: queue removed (peer gone or dropped us)") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is None:  # client: END for the server; our down queue is ours to remove
            _poke(self._wq, _T_END)
            _remove(self._rq)  # also wakes our reader blocked in another thread
            if not self.peer_alive():  # a dead server: its up queue is ours (uid) to clean
                _remove(self._wq)
            return
        listener, down = self._listener, self._wq
        _remove(self._rq)  # wakes our own blocked reader; a sending client gets Disconnected
        listener.forget(self, self._rq.key)
        if self._eof or not self.peer_alive():
            _remove(down)
            listener.forget(None, down.key)
            return
        _poke(down, _T_END)  # let the client read what we sent, then reap the queue

        def reap(_: str) -> None:
            _remove(down)
            listener.forget(None, down.key)

        def drained() -> bool:
            try:
                return bool(down.current_messages == 0)
            except (sysv_ipc.Error, OSError):
                return True

        _watchdog.watch(deadline_after(_DRAIN_GRACE), self.peer_pid, reap, drained)


class SysvListener(Listener):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.key = parse_key(endpoint.address)
        self._lock = ServerLock("sysv", _hex(self.key))
        self._lock.acquire()
        self._record = self._lock.path.removesuffix(".lock") + ".queues"
        self._keys: dict[int, int] = {}  # key -> queue id of every queue a new server may remove
        self._conns: set[SysvConnection] = set()
        self._mutex = threading.Lock()
        self._closed = False
        #: Messages taken off the rendezvous that were not hellos we could act on.
        self.dropped = 0
        try:
            self._reclaim()
            self.rendezvous = self._create_rendezvous()
        except BaseException:
            self._lock.release()
            raise

    def _create_rendezvous(self) -> sysv_ipc.MessageQueue:
        try:
            q = _queue(self.key, sysv_ipc.IPC_CREX, self.endpoint.mode)
        except sysv_ipc.ExistentialError:
            raise TransportError(self._taken()) from None
        with self._mutex:
            self._keys[self.key] = q.id
            self._save()
        return q

    def _taken(self) -> str:
        try:
            q = _queue(self.key)
            who = f"id {q.id}, owner uid {q.uid}, creator uid {q.cuid}, mode {q.mode:04o}"
        except (sysv_ipc.Error, OSError):
            who = "unknown owner"
        return (f"sysv key {_hex(self.key)} is held by a queue this server did not create "
                f"({who}): if it is a stale ipcgw queue remove it (ipcrm -Q {_hex(self.key)}), "
                "else pick another key")

    def _read_record(self) -> list[tuple[int, int]]:
        """(key, id) pairs a crashed server wrote; a file we did not write is ignored."""
        try:
            fd = open_private(self._record, os.O_RDONLY)
        except FileNotFoundError:
            return []
        except (TransportError, OSError) as exc:
            log.warning("ignoring %s: %s", self._record, exc)
            return []
        pairs = []
        with open(fd) as f:
            for line in f.read(1 << 20).splitlines():
                with contextlib.suppress(ValueError):
                    key, qid = line.split()
                    pairs.append((int(key), int(qid)))
        return pairs

    def _reclaim(self) -> None:
        """We hold the lock: whatever a crashed server recorded under this key is stale."""
        for key, qid in self._read_record():
            _remove_if_same(key, qid)
        for tmp in glob.glob(glob.escape(self._record) + ".*"):  # a save cut by kill -9
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _save(self) -> None:
        tmp = f"{self._record}.{os.getpid()}"  # callers hold self._mutex
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with open(fd, "w") as f:
            f.write("".join(f"{k} {i}\n" for k, i in self._keys.items()))
        os.replace(tmp, self._record)

    def forget(self, conn: SysvConnection | None, key: int) -> None:
        with self._mutex:
            if conn is not None:
                self._conns.discard(conn)
            if key in self._keys and not self._closed:
                del self._keys[key]
                self._save()

    def _heal(self) -> None:
        """Someone ran ipcrm on our rendezvous: we hold the ServerLock, so the key is
        ours; recreate it rather than stop serving new clients."""
        try:
            self.rendezvous = self._create_rendezvous()
        except (sysv_ipc.Error, OSError, TransportError) as exc:
            raise TransportError(f"rendezvous queue {_hex(self.key)} was removed and cannot be "
                                 f"recreated: {exc}") from None
        log.warning("sysv rendezvous queue %s was removed (ipcrm?); recreated it", _hex(self.key))

    def accept(self) -> Connection:
        while True:
            if self._closed:
                raise ListenerClosed("listener closed")
            try:
                payload, mtype = self.rendezvous.receive()  # any type: junk is drained, not kept
            except _GONE:
                if self._closed:
                    raise ListenerClosed("listener closed") from None
                self._heal()
                continue
            except sysv_ipc.Error:  # EINTR
                continue
            conn = self._admit(payload) if mtype == _T_HELLO else None
            if conn is not None:
                return conn
            self.dropped += 1

    def _admit(self, payload: bytes) -> SysvConnection | None:
        """A connection for a hello whose sender proved it filled the queue it names,
        else None. Costs a few non-blocking syscalls and creates nothing until then."""
        hello = unpack_hello(payload)
        if hello is None or not pid_alive(hello.pid):
            return None
        if hello.b and time.monotonic_ns() >= hello.b:
            return None  # the client has given up already
        try:
            qid_text, nonce_hex = hello.text.split(b":", 1)
            qid, nonce = int(qid_text), bytes.fromhex(nonce_hex.decode("ascii"))
        except ValueError:
            return None
        if len(nonce) != _NONCE or hello.a in self._keys:
            return None
        try:
            down = _queue(hello.a)
            if down.id != qid:
                return None
            auth, _ = down.receive(block=False, type=_T_AUTH)
        except (sysv_ipc.Error, OSError):
            return None
        if not hmac.compare_digest(auth, nonce):  # not the sender's queue: leave it as it was
            with contextlib.suppress(sysv_ipc.Error, OSError):
                down.send(auth, block=False, type=_T_AUTH)
            return None
        uid, gid = down.cuid, down.cgid
        exclusive = not down.mode & 0o022
        with self._mutex:
            if self._closed:
                raise ListenerClosed("listener closed")
            up = None
            try:
                up = _create_random(0o600, self.key)  # then owned by the client: its alone
                self._keys[up.key] = up.id
                if uid != os.geteuid():
                    up.uid = uid  # so the client may write it; we stay its creator
                self._keys[down.key] = down.id
                self._save()
            except (sysv_ipc.Error, OSError) as exc:
                if up is not None:
                    _remove(up)
                    self._keys.pop(up.key, None)
                self._keys.pop(down.key, None)
                with contextlib.suppress(sysv_ipc.Error, OSError):
                    down.send(pack_hello(os.getpid(), status=1,
                                         text=f"server cannot create queues: {exc}".encode()),
                              block=False, type=_T_WELCOME)
                return None
            conn = SysvConnection(up, down, hello.pid, f"sysv client pid {hello.pid}", self)
            if exclusive:
                conn.peer_uid, conn.peer_gid = uid, gid
            self._conns.add(conn)
        try:
            down.send(pack_hello(os.getpid(), up.key, up.id), block=False, type=_T_WELCOME)
        except (sysv_ipc.Error, OSError):
            conn._eof = True  # never started: remove both queues now
            conn.close()
            return None
        return conn

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            conns, keys = list(self._conns), dict(self._keys)
        _remove(self.rendezvous)  # wakes a blocked accept()
        for conn in conns:
            conn._closed = True
        for key, qid in keys.items():
            _remove_if_same(key, qid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record)
        self._lock.release()


class SysvTransport(Transport):
    scheme: ClassVar[str] = "sysv"
    crosses_netns: ClassVar[bool] = True
    message_boundaries: ClassVar[bool] = True
    max_message_size: ClassVar[int | None] = 8192

    @classmethod
    def listen(cls, endpoint: Endpoint) -> Listener:
        return SysvListener(endpoint)

    @classmethod
    def connect(cls, endpoint: Endpoint, timeout: float = 5.0) -> Connection:
        key = parse_key(endpoint.address)
        deadline = time.monotonic() + timeout
        where = f"sysv://{_hex(key)}"
        try:
            rendezvous = _queue(key, 0, 0o200)  # asks for write access only (0622 grants that)
        except sysv_ipc.ExistentialError:
            raise ConnectError(f"no server at {where}: no message queue with that key (is "
                               "`ipcgw serve` running, in this IPC namespace?)") from None
        except sysv_ipc.PermissionsError as e:
            raise ConnectError(f"cannot open {where}: {e}") from None
        try:
            owner_uid = rendezvous.uid
        except (sysv_ipc.Error, OSError):  # IPC_STAT needs read access: 0622 lets us only write
            owner_uid = -1
        owner = lock_owner("sysv", _hex(key), owner_uid)
        if owner is None:
            raise ConnectError(f"no server at {where}: its queue is stale (no live server holds "
                               f"{ServerLock('sysv', _hex(key)).path}); a new server reclaims it")
        server = f"server pid {owner}" if owner != UNKNOWN_OWNER else "the server"
        watched = owner if owner != UNKNOWN_OWNER else os.getpid()
        down = _create_random(endpoint.mode, key)
        try:
            nonce = secrets.token_bytes(_NONCE)
            down.send(nonce, block=False, type=_T_AUTH)
            hello = pack_hello(os.getpid(), down.key, int(deadline * 1e9),
                               text=f"{down.id}:{nonce.hex()}".encode())
            while True:
                try:
                    rendezvous.send(hello, block=False, type=_T_HELLO)
                    break
                except sysv_ipc.BusyError:
                    if time.monotonic() >= deadline:
                        raise ConnectError(f"{where}: rendezvous queue full, {server} is not "
                                           "accepting") from None
                    time.sleep(0.002)  # connect only: the rendezvous is full of hellos
                except _GONE:
                    raise ConnectError(f"{where}: server went away") from None
            while True:
                w = _watchdog.watch(deadline, watched, lambda _: _poke(down, _T_WELCOME))
                try:
                    payload, _ = down.receive(type=_T_WELCOME)
                except sysv_ipc.Error:
                    payload = b""
                finally:
                    _watchdog.unwatch(w)
                if payload:
                    break
                if not pid_alive(watched):
                    raise ConnectError(f"{where}: {server} died during connect")
                if remaining(deadline) == 0:
                    raise ConnectError(f"{where}: {server} did not answer within {timeout:g} s")
            welcome = read_welcome(payload, where)
            try:
                up = _queue(welcome.a)
                if up.id != welcome.b:
                    raise sysv_ipc.ExistentialError("not the queue the server made")
            except (sysv_ipc.Error, OSError) as e:
                raise ConnectError(f"{where}: the server's queue vanished: {e}") from None
        except BaseException:
            _remove(down)
            raise
        return SysvConnection(down, up, welcome.pid, f"sysv server pid {welcome.pid}")
