"""Message-queue pairs for the reference runs, owned (and removed) by the bench.

The bench process creates both queues and removes them in ``__exit__``,
whatever happens to the child that uses them: a killed C or Python echo
cannot leak a queue. Sizes are the OS defaults the gateway runs under
(SysV ``msgmax``, POSIX ``msg_max`` x ``msgsize_max``), read from /proc.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

__all__ = ["QueuePair", "mq_limits", "sysv_msgmax"]

_ids = itertools.count(1)


def _read_int(path: str, default: int) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def sysv_msgmax() -> int:
    return _read_int("/proc/sys/kernel/msgmax", 8192)


def mq_limits() -> tuple[int, int]:
    """(max messages, max message size) a non-privileged queue may have by default."""
    return (_read_int("/proc/sys/fs/mqueue/msg_max", 10),
            _read_int("/proc/sys/fs/mqueue/msgsize_max", 8192))


class QueuePair:
    """Two queues, client->server (c2s) and server->client (s2c)."""

    def __init__(self, kind: str) -> None:
        if kind not in ("sysv", "posixmq"):
            raise ValueError(f"no queue pair for {kind}")
        self.kind = kind
        self.queues: list[object] = []
        self.names: list[str] = []

    def __enter__(self) -> QueuePair:
        try:
            if self.kind == "sysv":
                import sysv_ipc

                for _ in range(2):
                    self.queues.append(sysv_ipc.MessageQueue(
                        None, sysv_ipc.IPC_CREX, 0o600, max_message_size=sysv_msgmax()))
            else:
                import posix_ipc

                maxmsg, msgsize = mq_limits()
                tag = f"/ipcgwb-{os.getpid()}-{next(_ids)}"
                for direction in ("c2s", "s2c"):
                    name = f"{tag}-{direction}"
                    self.queues.append(posix_ipc.MessageQueue(
                        name, posix_ipc.O_CREX, 0o600, max_messages=maxmsg,
                        max_message_size=msgsize, read=True, write=True))
                    self.names.append(name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def c_args(self) -> list[str]:
        """What the C programs take: msqids (SysV) or names (POSIX)."""
        if self.kind == "sysv":
            return [str(q.id) for q in self.queues]  # type: ignore[attr-defined]
        return list(self.names)

    def py_args(self) -> list[str]:
        """What bench/echo.py takes: keys (SysV) or names (POSIX)."""
        if self.kind == "sysv":
            return [str(q.key) for q in self.queues]  # type: ignore[attr-defined]
        return list(self.names)

    def unlink_names(self) -> None:
        """POSIX names can go once both sides have opened them: nothing leaks after a crash."""
        if self.kind == "posixmq":
            import posix_ipc

            for name in self.names:
                with contextlib.suppress(posix_ipc.Error):
                    posix_ipc.unlink_message_queue(name)

    def close(self) -> None:
        if self.kind == "sysv":
            import sysv_ipc

            for q in self.queues:
                with contextlib.suppress(sysv_ipc.Error, OSError):
                    q.remove()  # type: ignore[attr-defined]
        else:
            import posix_ipc

            for q in self.queues:
                with contextlib.suppress(posix_ipc.Error):
                    q.close()  # type: ignore[attr-defined]
            for name in self.names:
                with contextlib.suppress(posix_ipc.Error):
                    posix_ipc.unlink_message_queue(name)
        self.queues.clear()
