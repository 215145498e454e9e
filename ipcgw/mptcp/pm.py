"""The path-manager backend: the kernel's ``mptcp_pm`` commands as Python calls.

Two halves, as in the kernel:

* kernel PM (per namespace): endpoints add / delete / flush / show, endpoint
  flags (backup on, clear), limits get / set;
* userspace PM (per connection token): ANNOUNCE, REMOVE, SUBFLOW_CREATE,
  SUBFLOW_DESTROY, SET_FLAGS — what mptcpd's plugins issue.

Every refusal of the kernel raises :class:`~ipcgw.mptcp.genl.KernelError`
carrying the kernel's extack words ("invalid token", "subflow not found", ...),
so a gateway can hand them to its client verbatim. Results are plain dicts and
lists so they travel in a msgpack ``Result`` unchanged.

The commands a simulation sends at run time (endpoint flags and get-by-id,
limits, every userspace-PM command) go through :class:`~ipcgw.mptcp.lean.LeanPM`,
pre-built messages on a command socket of their own (~8 µs for a GET_LIMITS
instead of ~50 µs); ``lean=False`` sends them through pyroute2 like
everything else (dumps, endpoint add/delete/flush), the reference the tests
hold the lean path to. Both paths check arguments alike, in the same order,
with the same words.

Remember the userspace-PM rule: the kernel accepts MP_JOINs and ADD_ADDRs only
while some socket listens on ``mptcp_pm_events`` (host-wide, not per namespace).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from ipcgw.mptcp import genl
from ipcgw.mptcp.genl import ADDR_FLAG_NAMES, GenlSocket, KernelError
from ipcgw.mptcp.lean import LeanPM, pack_addr

__all__ = [
    "KernelError",
    "PathManager",
    "flags_to_names",
    "format_token",
    "names_to_flags",
    "parse_token",
]

FlagsArg = int | str | Iterable[str] | None


def names_to_flags(flags: FlagsArg) -> int:
    """``"signal,backup"``, ``["subflow"]`` or an int -> the flag bits."""
    if flags is None:
        return 0
    if isinstance(flags, int):
        return flags
    names = flags.replace(",", " ").split() if isinstance(flags, str) else list(flags)
    bits = 0
    for name in names:
        try:
            bits |= ADDR_FLAG_NAMES[name.lower()]
        except KeyError:
            raise ValueError(
                f"unknown endpoint flag {name!r} (known: {', '.join(ADDR_FLAG_NAMES)})"
            ) from None
    return bits


def flags_to_names(bits: int) -> list[str]:
    return [name for name, bit in ADDR_FLAG_NAMES.items() if bits & bit]


_HEX = frozenset("0123456789abcdefABCDEF")


def format_token(token: int) -> str:
    """The one printed form of a connection token: ``0x`` and 8 hex digits.

    ``ip mptcp monitor`` prints bare hex and ``pm_nl_ctl`` decimal; a bare hex
    token made only of digits reads as another (decimal) number, so ipcgw
    always prints the prefix, and :func:`parse_token` reads both of its forms.
    """
    return f"0x{token:08x}"


def parse_token(text: str | int) -> int:
    """``0x``-prefixed hex or plain decimal (or an int) -> a token (u32).

    Bare hex such as ``e3237b7a`` is refused, never guessed: were it all
    digits it would silently be read as a different, decimal, number.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return _u32(text, "token")
    if not isinstance(text, str):
        raise ValueError(f"token must be 0x-prefixed hex or decimal, got {text!r}")
    s = text.strip()
    if s[:2] in ("0x", "0X") and s[2:] and set(s[2:]) <= _HEX:
        value = int(s[2:], 16)
    elif s.isdecimal() and s.isascii():
        value = int(s, 10)
    elif s and set(s) <= _HEX:
        raise ValueError(f"token {text!r} is ambiguous: write hex as 0x{s} (or give it in decimal)")
    else:
        raise ValueError(f"token must be 0x-prefixed hex or decimal, got {text!r}")
    if value > 0xFFFFFFFF:
        raise ValueError(f"token must fit in 32 bits, got {text!r}")
    return value


def _addr_nest(
    addr: str | None = None,
    id: int | None = None,
    port: int | None = None,
    flags: int | None = None,
    ifindex: int | None = None,
) -> dict[str, Any]:
    """The MPTCP_PM_ATTR_ADDR nest; PORT goes in host order (kernel fact)."""
    attrs: list[tuple[str, Any]] = []
    if addr is not None:
        ip = ipaddress.ip_address(addr)
        if ip.version == 4:
            attrs.append(("MPTCP_PM_ADDR_ATTR_FAMILY", socket.AF_INET))
            attrs.append(("MPTCP_PM_ADDR_ATTR_ADDR4", str(ip)))
        else:
            attrs.append(("MPTCP_PM_ADDR_ATTR_FAMILY", socket.AF_INET6))
            attrs.append(("MPTCP_PM_ADDR_ATTR_ADDR6", str(ip)))
    if id is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_ID", _u8(id, "id")))
    if port is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_PORT", _u16(port, "port")))
    if flags is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_FLAGS", flags))
    if ifindex is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_IF_IDX", _ifindex(ifindex)))
    return {"attrs": attrs}


def _check_nest(
    addr: str | None = None,
    id: int | None = None,
    port: int | None = None,
    ifindex: int | None = None,
) -> None:
    """The checks :func:`_addr_nest` makes, in its order, for the lean path."""
    if addr is not None:
        pack_addr(addr)
    if id is not None:
        _u8(id, "id")
    if port is not None:
        _u16(port, "port")
    if ifindex is not None:
        _ifindex(ifindex)


def _u8(value: int, name: str) -> int:
    if type(value) is not int or not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be an integer 0..255, got {value!r}")
    return value


def _u16(value: int, name: str) -> int:
    if type(value) is not int or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be an integer 0..65535, got {value!r}")
    return value


def _ifindex(value: int) -> int:
    if type(value) is not int or not 0 <= value < 2**31:
        raise ValueError(f"ifindex must be an interface index (0: none), got {value!r}")
    return value


def _u32(value: int, name: str) -> int:
    if type(value) is not int or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be an integer 0..2**32-1, got {value!r}")
    return value


def _endpoint(nest: Any) -> dict[str, Any]:
    """A decoded address nest -> {id, addr, port, flags, flag_names, ifindex}."""
    flags = nest.get_attr("MPTCP_PM_ADDR_ATTR_FLAGS") or 0
    return {
        "id": nest.get_attr("MPTCP_PM_ADDR_ATTR_ID"),
        "addr": nest.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4")
        or nest.get_attr("MPTCP_PM_ADDR_ATTR_ADDR6"),
        "port": nest.get_attr("MPTCP_PM_ADDR_ATTR_PORT") or 0,
        "flags": flags,
        "flag_names": flags_to_names(flags),
        "ifindex": nest.get_attr("MPTCP_PM_ADDR_ATTR_IF_IDX") or 0,
    }


class PathManager:
    """Commands to the MPTCP path manager of one network namespace.

    Thread-safe (each netlink socket serializes its requests with a lock).
    Through pyroute2 a request costs a few tens of µs, mostly encode/decode;
    the run-time commands take the lean path unless ``lean=False``.
    """

    def __init__(self, netns: str | None = None, lean: bool = True) -> None:
        self.netns = netns
        self._nl = GenlSocket(genl.MPTCP_PM_NAME, genl.mptcp_pm_msg, netns=netns)
        self._lean: LeanPM | None = None
        if lean:
            try:
                self._lean = LeanPM(netns)
            except BaseException:
                self._nl.close()
                raise

    @property
    def lean(self) -> bool:
        return self._lean is not None

    def close(self) -> None:
        self._nl.close()
        if self._lean is not None:
            self._lean.close()

    def __enter__(self) -> PathManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, op: str, cmd: int, attrs: list[Any] | None = None, dump: bool = False) -> Any:
        try:
            return self._nl.request(cmd, attrs, dump=dump)
        except KernelError as exc:
            exc.op = op
            raise

    # -- kernel PM: endpoints ------------------------------------------------

    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint of the namespace, sorted by id."""
        replies = self._do("endpoint.show", genl.MPTCP_PM_CMD_GET_ADDR, dump=True)
        eps = [_endpoint(m.get_attr("MPTCP_PM_ATTR_ADDR")) for m in replies]
        return sorted(eps, key=lambda e: e["id"])

    def endpoint(self, id: int) -> dict[str, Any]:
        """One endpoint by id (KernelError when it does not exist)."""
        if self._lean is not None:
            return self._lean.endpoint(_u8(id, "id"))
        nest = _addr_nest(id=id)
        (reply,) = self._do(
            "endpoint.get", genl.MPTCP_PM_CMD_GET_ADDR, [("MPTCP_PM_ATTR_ADDR", nest)]
        )
        return _endpoint(reply.get_attr("MPTCP_PM_ATTR_ADDR"))

    def add_endpoint(
        self,
        addr: str,
        id: int | None = None,
        flags: FlagsArg = "subflow",
        port: int | None = None,
        ifindex: int | None = None,
    ) -> dict[str, Any]:
        """Add an endpoint; returns it as the kernel stored it (id assigned).

        The kernel's ACK carries no id, so the new endpoint is looked up
        again. The kernel refuses a second endpoint with the same address and
        port, so (address, port) names it; ``id`` 0 or None means "the kernel
        picks one", any other id must match too.
        """
        nest = _addr_nest(addr, id, port, names_to_flags(flags), ifindex)
        self._do("endpoint.add", genl.MPTCP_PM_CMD_ADD_ADDR, [("MPTCP_PM_ATTR_ADDR", nest)])
        want = (str(ipaddress.ip_address(addr)), port or 0)
        for ep in self.endpoints():
            if (ep["addr"], ep["port"]) == want and (not id or ep["id"] == id):
                return ep
        where = f"{addr} port {port}" if port else addr
        raise KernelError(0, f"endpoint {where} vanished right after it was added", "endpoint.add")

    def delete_endpoint(self, id: int, addr: str | None = None) -> None:
        nest = _addr_nest(addr, id)
        self._do("endpoint.delete", genl.MPTCP_PM_CMD_DEL_ADDR, [("MPTCP_PM_ATTR_ADDR", nest)])

    def flush_endpoints(self) -> None:
        self._do(
            "endpoint.flush", genl.MPTCP_PM_CMD_FLUSH_ADDRS, [("MPTCP_PM_ATTR_ADDR", _addr_nest())]
        )

    def set_endpoint_flags(self, id: int, backup: bool, fullmesh: bool = False) -> None:
        """Backup on, or clear (backup=False): the sspi BACKUP_FLAG_ON / CLEAR_FLAGS.

        The kernel changes only the backup and fullmesh bits of an endpoint;
        existing subflows on it get MP_PRIO.
        """
        bits = (genl.MPTCP_PM_ADDR_FLAG_BACKUP if backup else 0) | (
            genl.MPTCP_PM_ADDR_FLAG_FULLMESH if fullmesh else 0
        )
        if self._lean is not None:
            return self._lean.set_endpoint_flags(_u8(id, "id"), bits)
        nest = _addr_nest(id=id, flags=bits)
        self._do("endpoint.set_flags", genl.MPTCP_PM_CMD_SET_FLAGS, [("MPTCP_PM_ATTR_ADDR", nest)])

    # -- kernel PM: limits ----------------------------------------------------

    def limits(self) -> dict[str, int]:
        if self._lean is not None:
            return self._lean.limits()
        (reply,) = self._do("limits.get", genl.MPTCP_PM_CMD_GET_LIMITS)
        return {
            "subflows": reply.get_attr("MPTCP_PM_ATTR_SUBFLOWS") or 0,
            "add_addr_accepted": reply.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS") or 0,
        }

    def set_limits(
        self, subflows: int | None = None, add_addr_accepted: int | None = None
    ) -> dict[str, int]:
        attrs: list[tuple[str, int]] = []
        if subflows is not None:
            attrs.append(("MPTCP_PM_ATTR_SUBFLOWS", _u32(subflows, "subflows")))
        if add_addr_accepted is not None:
            attrs.append(
                ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", _u32(add_addr_accepted, "add_addr_accepted"))
            )
        if self._lean is not None:
            self._lean.set_limits(subflows, add_addr_accepted)
            return self._lean.limits()
        self._do("limits.set", genl.MPTCP_PM_CMD_SET_LIMITS, attrs)
        return self.limits()

    # -- userspace PM ---------------------------------------------------------

    def announce(
        self,
        token: int,
        addr: str,
        id: int,
        port: int | None = None,
        ifindex: int | None = None,
    ) -> None:
        """ADD_ADDR ``addr`` (local id ``id``) on connection ``token``.

        ``ifindex`` is the interface the address lives on, as ``pm_nl_ctl ann
        ... dev X`` passes it; the kernel keeps it in the connection's list of
        local addresses.
        """
        if self._lean is not None:
            _check_nest(addr, id, port, ifindex)
            return self._lean.announce(_u32(token, "token"), addr, id, port, ifindex)
        nest = _addr_nest(addr, id, port, genl.MPTCP_PM_ADDR_FLAG_SIGNAL, ifindex)
        self._do(
            "pm.announce",
            genl.MPTCP_PM_CMD_ANNOUNCE,
            [("MPTCP_PM_ATTR_TOKEN", _u32(token, "token")), ("MPTCP_PM_ATTR_ADDR", nest)],
        )

    def remove(self, token: int, id: int) -> None:
        """RM_ADDR of local address id ``id`` on connection ``token``."""
        if self._lean is not None:
            return self._lean.remove(_u32(token, "token"), _u8(id, "id"))
        self._do(
            "pm.remove",
            genl.MPTCP_PM_CMD_REMOVE,
            [
                ("MPTCP_PM_ATTR_TOKEN", _u32(token, "token")),
                ("MPTCP_PM_ATTR_LOC_ID", _u8(id, "id")),
            ],
        )

    def subflow_create(
        self,
        token: int,
        local_addr: str,
        remote_addr: str,
        remote_port: int,
        local_id: int | None = None,
        local_port: int | None = None,
        backup: bool = False,
        ifindex: int | None = None,
    ) -> None:
        """MP_JOIN from ``local_addr`` to ``remote_addr:remote_port``.

        With ``ifindex`` the kernel binds the new subflow to that interface
        (``SO_BINDTODEVICE``): the way to pin a path when the routing table
        alone would pick another.
        """
        flags = genl.MPTCP_PM_ADDR_FLAG_BACKUP if backup else None
        if self._lean is not None:
            _check_nest(local_addr, local_id, local_port, ifindex)
            token = _u32(token, "token")
            _check_nest(remote_addr, port=remote_port)
            return self._lean.subflow_create(token, local_addr, remote_addr,
                                             remote_port, local_id, local_port, flags, ifindex)
        local = _addr_nest(local_addr, local_id, local_port, flags, ifindex)
        self._do(
            "pm.subflow_create",
            genl.MPTCP_PM_CMD_SUBFLOW_CREATE,
            [
                ("MPTCP_PM_ATTR_TOKEN", _u32(token, "token")),
                ("MPTCP_PM_ATTR_ADDR", local),
                ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_nest(remote_addr, port=remote_port)),
            ],
        )

    def subflow_destroy(
        self, token: int, local_addr: str, local_port: int, remote_addr: str, remote_port: int
    ) -> None:
        if self._lean is not None:
            token = _u32(token, "token")
            _check_nest(local_addr, port=local_port)
            _check_nest(remote_addr, port=remote_port)
            return self._lean.subflow_destroy(token, local_addr, local_port,
                                              remote_addr, remote_port)
        self._do(
            "pm.subflow_destroy",
            genl.MPTCP_PM_CMD_SUBFLOW_DESTROY,
            [
                ("MPTCP_PM_ATTR_TOKEN", _u32(token, "token")),
                ("MPTCP_PM_ATTR_ADDR", _addr_nest(local_addr, port=local_port)),
                ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_nest(remote_addr, port=remote_port)),
            ],
        )

    def set_flags(
        self,
        token: int,
        local_addr: str,
        local_port: int,
        remote_addr: str,
        remote_port: int,
        backup: bool,
    ) -> None:
        """MP_PRIO on one subflow; the *peer* raises SUB_PRIORITY."""
        bits = genl.MPTCP_PM_ADDR_FLAG_BACKUP if backup else 0
        if self._lean is not None:
            token = _u32(token, "token")
            _check_nest(local_addr, port=local_port)
            _check_nest(remote_addr, port=remote_port)
            return self._lean.set_flags(token, local_addr, local_port,
                                        remote_addr, remote_port, bits)
        self._do(
            "pm.set_flags",
            genl.MPTCP_PM_CMD_SET_FLAGS,
            [
                ("MPTCP_PM_ATTR_TOKEN", _u32(token, "token")),
                ("MPTCP_PM_ATTR_ADDR", _addr_nest(local_addr, port=local_port, flags=bits)),
                ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_nest(remote_addr, port=remote_port)),
            ],
        )
