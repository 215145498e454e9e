"""System V message queues: ``sysv://KEY``.

Features
========
- The queue at KEY is only the rendezvous. A client sends a hello (type 1,
  its pid, a random reply type, its connect deadline); the server creates two
  private queues for it (``up`` client→server, ``down`` server→client) under
  fresh random keys and answers on the rendezvous with that reply type. So a
  client that stops reading fills only its own ``down`` queue and never
  blocks the others; the server drops it after ``send_timeout``.
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
- ``close()`` sends END and wakes its own reader; the server removes ``up`` at
  once and ``down`` when the client has drained it, died, or after 30 s.
  ``Listener.close()`` removes every queue at once.
- Crash recovery: ``ServerLock("sysv", KEY)``; the keys of per-client queues
  are listed in a file next to the lock, so a new server removes the queues
  of a crashed one, then the stale rendezvous queue.
- Crosses network namespaces (queues belong to the IPC namespace).

Limits: ``msgmax`` 8192 bytes per message and ``msgmnb`` 16384 bytes per
queue (so a sender runs at most two full chunks ahead), ``msgmni`` queues
system-wide; raising them needs CAP_SYS_RESOURCE.

URL
===
``sysv://0x1c0ffee`` or ``sysv://29425646`` (not 0, which is IPC_PRIVATE);
``?mode=0600`` sets the permissions of every queue created.
"""

from __future__ import annotations

import contextlib
import glob
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
    WAKE,
    MqConnection,
    lock_owner,
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
    deadline_after,
    pid_alive,
    remaining,
)
from ipcgw.url import Endpoint

__all__ = ["SysvTransport"]

_T_HELLO = 1
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


def _remove_key(key: int) -> None:
    with contextlib.suppress(sysv_ipc.ExistentialError, sysv_ipc.PermissionsError):
        sysv_ipc.MessageQueue(key).remove()


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


class SysvConnection(MqConnection):
    def __init__(self, rq: sysv_ipc.MessageQueue, wq: sysv_ipc.MessageQueue, peer_pid: int,
                 peer: str, listener: SysvListener | None = None, reply_type: int = 0,
                 connect_deadline_ns: int = 0) -> None:
        super().__init__(peer_pid, MSGMAX, peer)
        self._rq, self._wq = rq, wq
        self._listener = listener
        self._reply_type = reply_type
        self._connect_deadline_ns = connect_deadline_ns

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
        except Timeout:  # a TimeoutError, hence an OSError, hence in _GONE: keep it
            raise
        except _GONE:
            raise Disconnected(f"{self.peer}: queue removed (peer gone or closed)") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is None:  # client: END for the server, wake our reader
            _poke(self._wq, _T_END)
            _poke(self._rq, _T_WAKE)
            if not self.peer_alive():  # a dead server's queues are ours to clean
                _remove(self._rq)
                _remove(self._wq)
            return
        listener, down = self._listener, self._wq
        _remove(self._rq)  # wakes our own blocked reader; a sending client is refused
        listener.forget(self, self._rq.key)
        if self._eof or not self.peer_alive():
            _remove(down)
            listener.forget(None, down.key)
        else:  # let the client read what we sent, then reap the queue
            _poke(down, _T_END)

            def reap(_: str) -> None:
                _remove(down)
                listener.forget(None, down.key)

            def drained() -> bool:
                try:
                    return bool(down.current_messages == 0)
                except (sysv_ipc.Error, OSError):
                    return True

            _watchdog.watch(deadline_after(_DRAIN_GRACE), self.peer_pid, reap, drained)
        if self._peer_dead or time.monotonic_ns() > self._connect_deadline_ns:
            with contextlib.suppress(sysv_ipc.Error, OSError):  # a welcome nobody will pick up
                listener.rendezvous.receive(block=False, type=self._reply_type)


class SysvListener(Listener):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.key = parse_key(endpoint.address)
        self._lock = ServerLock("sysv", _hex(self.key))
        self._lock.acquire()
        self._record = self._lock.path.removesuffix(".lock") + ".queues"
        self._keys: set[int] = set()
        self._conns: set[SysvConnection] = set()
        self._mutex = threading.Lock()
        self._closed = False
        self._reclaim()
        try:
            self.rendezvous = _queue(self.key, sysv_ipc.IPC_CREX, endpoint.mode)
        except BaseException:
            self._lock.release()
            raise

    def _reclaim(self) -> None:
        """We hold the lock: whatever a crashed server left under this key is stale."""
        with contextlib.suppress(FileNotFoundError), open(self._record) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    _remove_key(int(line, 0))
        _remove_key(self.key)
        for tmp in glob.glob(glob.escape(self._record) + ".*"):  # a save cut by kill -9
            os.unlink(tmp)
        self._save()

    def _save(self) -> None:
        tmp = f"{self._record}.{os.getpid()}"  # callers hold self._mutex
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write("".join(f"{k}\n" for k in self._keys))
        os.replace(tmp, self._record)

    def forget(self, conn: SysvConnection | None, key: int) -> None:
        with self._mutex:
            if conn is not None:
                self._conns.discard(conn)
            if key in self._keys and not self._closed:
                self._keys.discard(key)
                self._save()

    def _new_queue(self) -> sysv_ipc.MessageQueue:
        while True:
            key = secrets.randbelow(2**31 - 2) + 1
            if key == self.key:
                continue
            try:
                q = _queue(key, sysv_ipc.IPC_CREX, self.endpoint.mode)
            except sysv_ipc.ExistentialError:  # EEXIST: key taken, draw again
                continue
            self._keys.add(key)
            return q

    def accept(self) -> Connection:
        while True:
            if self._closed:
                raise ListenerClosed("listener closed")
            try:
                payload, _ = self.rendezvous.receive(type=_T_HELLO)
            except _GONE:
                if self._closed:
                    raise ListenerClosed("listener closed") from None
                # Someone ran ipcrm on our rendezvous queue: we hold the ServerLock, so
                # the key is ours; recreate it rather than stop serving new clients.
                try:
                    self.rendezvous = _queue(self.key, sysv_ipc.IPC_CREAT, self.endpoint.mode)
                except (sysv_ipc.Error, OSError) as exc:
                    raise TransportError(
                        f"rendezvous queue {_hex(self.key)} was removed and cannot be "
                        f"recreated: {exc}") from None
                continue
            except sysv_ipc.Error:  # EINTR
                continue
            hello = unpack_hello(payload)
            if hello is None or hello.a < 2 or not pid_alive(hello.pid):
                continue
            if hello.b and time.monotonic_ns() >= hello.b:
                continue  # the client has given up already
            with self._mutex:
                if self._closed:
                    raise ListenerClosed("listener closed")
                try:
                    up, down = self._new_queue(), self._new_queue()
                    self._save()
                except (sysv_ipc.Error, OSError) as e:
                    reply = pack_hello(os.getpid(), status=1,
                                       text=f"server cannot create queues: {e}".encode())
                    with contextlib.suppress(sysv_ipc.Error):
                        self.rendezvous.send(reply, block=False, type=hello.a)
                    continue
                conn = SysvConnection(up, down, hello.pid, f"sysv client pid {hello.pid}",
                                      self, hello.a, hello.b)
                self._conns.add(conn)
            try:
                self.rendezvous.send(pack_hello(os.getpid(), up.key, down.key), block=False,
                                     type=hello.a)
            except (sysv_ipc.Error, OSError):
                conn._eof = True  # never started: remove both queues now
                conn.close()
                continue
            return conn

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            conns, keys = list(self._conns), list(self._keys)
        _remove(self.rendezvous)  # wakes a blocked accept()
        for conn in conns:
            conn._closed = True
        for key in keys:
            _remove_key(key)
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
            rendezvous = _queue(key)
        except sysv_ipc.ExistentialError:
            raise ConnectError(f"no server at {where}: no message queue with that key (is "
                               "`ipcgw serve` running, in this IPC namespace?)") from None
        except sysv_ipc.PermissionsError as e:
            raise ConnectError(f"cannot open {where}: {e}") from None
        lock = ServerLock("sysv", _hex(key))
        owner = lock_owner(lock)
        if owner is None:
            raise ConnectError(f"no server at {where}: its queue is stale (no live server holds "
                               f"{lock.path}); a new server reclaims it")
        reply_type = secrets.randbelow(2**31 - 3) + 2  # sysv_ipc takes a C int
        hello = pack_hello(os.getpid(), reply_type, int(deadline * 1e9))
        while True:
            try:
                rendezvous.send(hello, block=False, type=_T_HELLO)
                break
            except sysv_ipc.BusyError:
                if time.monotonic() >= deadline:
                    raise ConnectError(f"{where}: rendezvous queue full, server pid {owner} "
                                       "is not accepting") from None
                time.sleep(0.01)  # connect only: the rendezvous is full of hellos
            except _GONE:
                raise ConnectError(f"{where}: server went away") from None
        while True:
            w = _watchdog.watch(deadline, owner, lambda _: _poke(rendezvous, reply_type))
            try:
                payload, _ = rendezvous.receive(type=reply_type)
            except _GONE:
                raise ConnectError(f"{where}: server went away during connect") from None
            except sysv_ipc.Error:
                payload = b""
            finally:
                fired = _watchdog.unwatch(w)
            if payload:
                if fired:  # our WAKE raced the reply: do not leave it behind
                    with contextlib.suppress(sysv_ipc.Error, OSError):
                        rendezvous.receive(block=False, type=reply_type)
                break
            if not pid_alive(owner):
                raise ConnectError(f"{where}: server pid {owner} died during connect")
            if remaining(deadline) == 0:
                raise ConnectError(f"{where}: server pid {owner} did not answer within "
                                   f"{timeout:g} s")
        welcome = unpack_hello(payload)
        if welcome is None or welcome.status:
            text = welcome.text.decode(errors="replace") if welcome else "bad welcome"
            raise ConnectError(f"{where} refused: {text}")
        try:
            up, down = _queue(welcome.a), _queue(welcome.b)
        except (sysv_ipc.Error, OSError) as e:
            raise ConnectError(f"{where}: per-client queues vanished: {e}") from None
        return SysvConnection(down, up, welcome.pid, f"sysv server pid {welcome.pid}")
