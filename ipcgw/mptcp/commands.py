"""Executing a Command against a table of ops, for every path-manager handler.

The direct handler (netlink) and the mptcpd one share what a Command means at
this level: an op name looked up in a table, arguments checked by name and
type, and the failure a client caused answered in its words (``BadArguments``,
the kernel's extack text) while only a bug is logged with a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ipcgw.errors import KernelError
from ipcgw.messages import Command, Message, Report, Result

if TYPE_CHECKING:
    from ipcgw.mptcp.policy import Policy

__all__ = ["BadArguments", "Op", "SessionLike", "args", "execute", "feed_policy", "flag"]

log = logging.getLogger("ipcgw.mptcp")


class SessionLike(Protocol):
    """What a handler needs of a gateway session."""

    id: int
    name: str

    def send(self, msg: Message) -> None: ...
    def post(self, msg: Message) -> None: ...
    @property
    def closed(self) -> bool: ...


Op = Callable[[SessionLike, Mapping[str, Any]], Any]


class BadArguments(ValueError):
    """A command's arguments are missing, unknown or of the wrong type."""


def args(given: Mapping[str, Any], required: Sequence[str], optional: Sequence[str] = ()
         ) -> dict[str, Any]:
    """``given`` as a dict, refused if a required name is missing or an unknown one is there."""
    missing = [k for k in required if k not in given]
    unknown = sorted(k for k in given if k not in required and k not in optional)
    if missing:
        raise BadArguments(f"missing argument(s): {', '.join(missing)}")
    if unknown:
        raise BadArguments(f"unknown argument(s): {', '.join(unknown)}")
    return dict(given)


def flag(value: Any, name: str) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise BadArguments(f"{name} must be a boolean, got {value!r}")


def execute(ops: Mapping[str, Op], session: SessionLike, cmd: Command,
            missing_op: Callable[[str], str | None] | None = None) -> Result | None:
    """Run ``cmd`` through ``ops``; the Result (None when request_id is 0: no reply wanted).
    ``missing_op(op)`` may say more than "unknown op" for an op this handler lacks."""
    op = ops.get(cmd.op)
    try:
        if op is None:
            raise BadArguments((missing_op and missing_op(cmd.op)) or f"unknown op {cmd.op!r}")
        if not isinstance(cmd.args, Mapping):
            raise BadArguments("args must be a map")
        result = Result(cmd.request_id, True, op(session, cmd.args), "")
    except KernelError as exc:
        result = Result(cmd.request_id, False, None, exc.message)
    except (BadArguments, ValueError, TypeError) as exc:
        result = Result(cmd.request_id, False, None, f"{cmd.op}: {exc}")
    except Exception as exc:
        log.exception("command %s failed", cmd.op)
        result = Result(cmd.request_id, False, None, f"{cmd.op}: internal error: {exc}")
    if not result.ok:
        log.info("session %s: %s %s -> %s", session.id, cmd.op, cmd.args, result.error)
    return result if cmd.request_id else None


def feed_policy(policy: Policy | None, session: SessionLike, report: Report) -> None:
    """Hand a Report to the policy with the session it came from; a policy's bug is
    logged, never the client's problem."""
    if policy is None:
        return
    try:
        policy.report_from(session.id, report)
    except Exception:
        log.exception("policy failed on a report")
