"""Executing a Command against a table of ops, for every path-manager handler.

The direct handler (netlink) and the mptcpd one share what a Command means at
this level: an op name looked up in a table, arguments checked by name and
type, and the failure a client caused answered in its words (``BadArguments``,
the kernel's extack text) while only a bug is logged with a traceback. The
path-manager ops themselves (:func:`pm_ops`) are one table for both: their
backends (``PathManager``, mptcpd's ``BridgePathManager``) have the same methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ipcgw.errors import KernelError
from ipcgw.messages import Command, Error, Message, Report, Result

if TYPE_CHECKING:
    from ipcgw.mptcp.policy import Policy

__all__ = ["BadArguments", "Op", "SessionLike", "args", "execute", "feed_policy", "flag", "on_client_message",
           "pm_ops"]

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


def on_client_message(run: Callable[[SessionLike, Command], Result | None], policy: Policy | None,
                      session: SessionLike, msg: Message) -> Message | None:
    """What a path-manager handler does with a client's message (the session has already
    answered Ping and Bye): a Command runs, a Report feeds the policy, anything else is
    the client's mistake."""
    if isinstance(msg, Command):
        return run(session, msg)
    if isinstance(msg, Report):
        feed_policy(policy, session, msg)
        return None
    return Error(f"unexpected {type(msg).__name__} from a client")


def pm_ops(pm: Any, interface: Callable[[dict[str, Any], str], dict[str, Any]]) -> dict[str, Op]:
    """The path-manager Commands, run the same way against either backend ``pm``: each
    op's argument names and types, and the token notation, are checked here once.
    ``interface(a, op)`` turns ``dev=`` into ``ifindex=`` (or refuses an interface
    where the backend cannot bind to one) and returns ``a``."""
    from ipcgw.mptcp.pm import parse_token

    def token(a: dict[str, Any]) -> dict[str, Any]:
        a["token"] = parse_token(a["token"])
        return a

    def endpoint_show(s: SessionLike, a: Mapping[str, Any]) -> Any:
        a = args(a, [], ["id"])
        return pm.endpoint(a["id"]) if "id" in a else pm.endpoints()

    def endpoint_set_flags(s: SessionLike, a: Mapping[str, Any]) -> Any:
        a = args(a, ["id", "backup"], ["fullmesh"])
        return pm.set_endpoint_flags(a["id"], flag(a["backup"], "backup"),
                                     flag(a.get("fullmesh", False), "fullmesh"))

    def announce(s: SessionLike, a: Mapping[str, Any]) -> Any:
        port = pm.announce(**interface(token(args(a, ["token", "addr", "id"],
                                                  ["port", "ifindex", "dev"])), "announce"))
        return None if port is None else {"port": port}  # mptcpd picks a port when none is given

    def subflow_create(s: SessionLike, a: Mapping[str, Any]) -> None:
        a = interface(token(args(a, ["token", "local_addr", "remote_addr", "remote_port"],
                                 ["local_id", "local_port", "backup", "ifindex", "dev"])),
                      "subflow_create")
        if "backup" in a:
            a["backup"] = flag(a["backup"], "backup")
        pm.subflow_create(**a)

    def set_flags(s: SessionLike, a: Mapping[str, Any]) -> None:
        a = token(args(a, ["token", "local_addr", "local_port", "remote_addr", "remote_port",
                           "backup"]))
        a["backup"] = flag(a["backup"], "backup")
        pm.set_flags(**a)

    four = ["token", "local_addr", "local_port", "remote_addr", "remote_port"]
    return {
        "endpoint.add": lambda s, a: pm.add_endpoint(**interface(
            args(a, ["addr"], ["id", "flags", "port", "ifindex", "dev"]), "endpoint.add")),
        "endpoint.delete": lambda s, a: pm.delete_endpoint(**args(a, ["id"], ["addr"])),
        "endpoint.flush": lambda s, a: pm.flush_endpoints(),
        "endpoint.show": endpoint_show,
        "endpoint.set_flags": endpoint_set_flags,
        "limits.get": lambda s, a: pm.limits(),
        "limits.set": lambda s, a: pm.set_limits(**args(a, [], ["subflows", "add_addr_accepted"])),
        "pm.announce": announce,
        "pm.remove": lambda s, a: pm.remove(**token(args(a, ["token", "id"]))),
        "pm.subflow_create": subflow_create,
        "pm.subflow_destroy": lambda s, a: pm.subflow_destroy(**token(args(a, four))),
        "pm.set_flags": set_flags,
    }
