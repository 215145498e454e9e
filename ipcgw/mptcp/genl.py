"""The ``mptcp_pm`` generic netlink family (v1): constants, message classes, a socket.

Constants are named as in ``include/uapi/linux/mptcp_pm.h``. The message
classes extend pyroute2's ``pyroute2.netlink.generic.mptcp.mptcp_msg`` (which
knows only the kernel-PM half) with the userspace-PM attributes and the event
attribute set, so pyroute2 does every encode and decode.

The I/O is not pyroute2's ``NetlinkSocket``: that class keeps a socket and an
asyncio loop *per thread* and costs ~100 µs a request, while a gateway calls
the backend from many session threads. :class:`GenlSocket` is a plain
``AF_NETLINK`` socket with one lock, a sequence counter and pyroute2's
``Marshal`` for parsing; a request then costs what encoding costs (~50 µs).
The commands a simulation sends at run time skip even that: they go through
:mod:`ipcgw.mptcp.lean` (pre-built messages, ~7 µs); this socket keeps the
rest (dumps, endpoint add/delete/flush, family lookups, events).

Byte-order facts (verified on the 6.18 kernel, see DESIGN.md): ``PORT`` in the
PM address nest is host order; ``SPORT``/``DPORT`` in events are big-endian;
address nests carry ``NLA_F_NESTED`` (the ``|nested`` suffix in ``nla_map``).
Commands and events share numbers (3 is GET_ADDR and CLOSED) and pyroute2
picks the decoder by the family id alone, so events need their own socket.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2.netlink import (
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_EXT_ACK,
    NETLINK_GENERIC,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    ctrlmsg,
    genlmsg,
    nlmsg,
    nlmsgerr,
)
from pyroute2.netlink.generic.mptcp import mptcp_msg
from pyroute2.netlink.marshal import Marshal

from ipcgw.errors import KernelError
from ipcgw.netns import socket_in_netns

__all__ = [
    "EVENT_NAMES",
    "MPTCP_PM_EV_GRP_NAME",
    "MPTCP_PM_NAME",
    "MPTCP_PM_VER",
    "GenlSocket",
    "KernelError",
    "mptcp_event_msg",
    "mptcp_pm_msg",
    "parse",
]

MPTCP_PM_NAME = "mptcp_pm"
MPTCP_PM_VER = 1
MPTCP_PM_EV_GRP_NAME = "mptcp_pm_events"
MPTCP_PM_CMD_GRP_NAME = "mptcp_pm_cmds"

# enum mptcp_event_type
MPTCP_EVENT_UNSPEC = 0
MPTCP_EVENT_CREATED = 1
MPTCP_EVENT_ESTABLISHED = 2
MPTCP_EVENT_CLOSED = 3
MPTCP_EVENT_ANNOUNCED = 6
MPTCP_EVENT_REMOVED = 7
MPTCP_EVENT_SUB_ESTABLISHED = 10
MPTCP_EVENT_SUB_CLOSED = 11
MPTCP_EVENT_SUB_PRIORITY = 13
MPTCP_EVENT_LISTENER_CREATED = 15
MPTCP_EVENT_LISTENER_CLOSED = 16

EVENT_NAMES: dict[int, str] = {
    MPTCP_EVENT_CREATED: "CREATED",
    MPTCP_EVENT_ESTABLISHED: "ESTABLISHED",
    MPTCP_EVENT_CLOSED: "CLOSED",
    MPTCP_EVENT_ANNOUNCED: "ANNOUNCED",
    MPTCP_EVENT_REMOVED: "REMOVED",
    MPTCP_EVENT_SUB_ESTABLISHED: "SUB_ESTABLISHED",
    MPTCP_EVENT_SUB_CLOSED: "SUB_CLOSED",
    MPTCP_EVENT_SUB_PRIORITY: "SUB_PRIORITY",
    MPTCP_EVENT_LISTENER_CREATED: "LISTENER_CREATED",
    MPTCP_EVENT_LISTENER_CLOSED: "LISTENER_CLOSED",
}

# commands (anonymous enum in mptcp_pm.h)
MPTCP_PM_CMD_UNSPEC = 0
MPTCP_PM_CMD_ADD_ADDR = 1
MPTCP_PM_CMD_DEL_ADDR = 2
MPTCP_PM_CMD_GET_ADDR = 3
MPTCP_PM_CMD_FLUSH_ADDRS = 4
MPTCP_PM_CMD_SET_LIMITS = 5
MPTCP_PM_CMD_GET_LIMITS = 6
MPTCP_PM_CMD_SET_FLAGS = 7
MPTCP_PM_CMD_ANNOUNCE = 8
MPTCP_PM_CMD_REMOVE = 9
MPTCP_PM_CMD_SUBFLOW_CREATE = 10
MPTCP_PM_CMD_SUBFLOW_DESTROY = 11

# endpoint flags (include/uapi/linux/mptcp.h)
MPTCP_PM_ADDR_FLAG_SIGNAL = 1 << 0
MPTCP_PM_ADDR_FLAG_SUBFLOW = 1 << 1
MPTCP_PM_ADDR_FLAG_BACKUP = 1 << 2
MPTCP_PM_ADDR_FLAG_FULLMESH = 1 << 3
MPTCP_PM_ADDR_FLAG_IMPLICIT = 1 << 4
MPTCP_PM_ADDR_FLAG_LAMINAR = 1 << 5

ADDR_FLAG_NAMES: dict[str, int] = {
    "signal": MPTCP_PM_ADDR_FLAG_SIGNAL,
    "subflow": MPTCP_PM_ADDR_FLAG_SUBFLOW,
    "backup": MPTCP_PM_ADDR_FLAG_BACKUP,
    "fullmesh": MPTCP_PM_ADDR_FLAG_FULLMESH,
    "implicit": MPTCP_PM_ADDR_FLAG_IMPLICIT,
    "laminar": MPTCP_PM_ADDR_FLAG_LAMINAR,
}

NLM_F_ACK_TLVS = 0x200
NETLINK_CAP_ACK = 10


class mptcp_pm_msg(mptcp_msg):
    """Requests and replies of the PM commands, including the userspace-PM ones."""

    # pyroute2 caches the compiled attribute table on the class; a subclass of
    # an already used class would inherit the parent's table without this.
    _nlmsg_base__compiled_nla = False
    nla_map = (
        ("MPTCP_PM_ATTR_UNSPEC", "none"),
        ("MPTCP_PM_ATTR_ADDR", "pm_addr|nested"),
        ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", "uint32"),
        ("MPTCP_PM_ATTR_SUBFLOWS", "uint32"),
        ("MPTCP_PM_ATTR_TOKEN", "uint32"),
        ("MPTCP_PM_ATTR_LOC_ID", "uint8"),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", "pm_addr|nested"),
    )

    class pm_addr(mptcp_msg.pm_addr):
        """The address nest; the upstream class decodes IF_IDX as hex and
        guesses the address family from the length."""

        _nlmsg_base__compiled_nla = False
        nla_map = (
            ("MPTCP_PM_ADDR_ATTR_UNSPEC", "none"),
            ("MPTCP_PM_ADDR_ATTR_FAMILY", "uint16"),
            ("MPTCP_PM_ADDR_ATTR_ID", "uint8"),
            ("MPTCP_PM_ADDR_ATTR_ADDR4", "ip4addr"),
            ("MPTCP_PM_ADDR_ATTR_ADDR6", "ip6addr"),
            ("MPTCP_PM_ADDR_ATTR_PORT", "uint16"),
            ("MPTCP_PM_ADDR_ATTR_FLAGS", "uint32"),
            ("MPTCP_PM_ADDR_ATTR_IF_IDX", "int32"),
        )


class mptcp_event_msg(genlmsg):
    """A message of the ``mptcp_pm_events`` group (``cmd`` is the event type)."""

    prefix = "MPTCP_ATTR_"
    nla_map = (
        ("MPTCP_ATTR_UNSPEC", "none"),
        ("MPTCP_ATTR_TOKEN", "uint32"),
        ("MPTCP_ATTR_FAMILY", "uint16"),
        ("MPTCP_ATTR_LOC_ID", "uint8"),
        ("MPTCP_ATTR_REM_ID", "uint8"),
        ("MPTCP_ATTR_SADDR4", "ip4addr"),
        ("MPTCP_ATTR_SADDR6", "ip6addr"),
        ("MPTCP_ATTR_DADDR4", "ip4addr"),
        ("MPTCP_ATTR_DADDR6", "ip6addr"),
        ("MPTCP_ATTR_SPORT", "be16"),
        ("MPTCP_ATTR_DPORT", "be16"),
        ("MPTCP_ATTR_BACKUP", "uint8"),
        ("MPTCP_ATTR_ERROR", "uint8"),
        ("MPTCP_ATTR_FLAGS", "uint16"),
        ("MPTCP_ATTR_TIMEOUT", "uint32"),
        ("MPTCP_ATTR_IF_IDX", "int32"),
        ("MPTCP_ATTR_RESET_REASON", "uint32"),
        ("MPTCP_ATTR_RESET_FLAGS", "uint32"),
        ("MPTCP_ATTR_SERVER_SIDE", "uint8"),
    )


class nlmsgerr_capped(nlmsgerr):
    """An error/ACK on a socket with ``NETLINK_CAP_ACK``: the kernel echoes only
    the request's header, and the extack TLVs follow it. pyroute2's
    ``nlmsgerr`` reads TLVs right after the error code, so it never finds the
    kernel's words."""

    _nlmsg_base__compiled_nla = False
    fields = (
        ("error", "i"),
        ("orig_length", "I"),
        ("orig_type", "H"),
        ("orig_flags", "H"),
        ("orig_seq", "I"),
        ("orig_pid", "I"),
    )


_HDR = struct.Struct("=IHHII")


class GenlSocket:
    """One generic netlink socket bound to a family, optionally in a namespace.

    Thread-safe: a request holds the lock from send to the final ACK/DONE, so
    replies never interleave. ``groups`` joins multicast groups by name; such
    a socket is for :meth:`recv_messages` only.
    """

    def __init__(
        self,
        family: str = MPTCP_PM_NAME,
        msg_class: type[nlmsg] = mptcp_pm_msg,
        netns: str | None = None,
        groups: Iterable[str] = (),
        rcvbuf: int = 1 << 20,
    ) -> None:
        self.netns = netns
        self.sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
            self._lock = threading.Lock()
            self._seq = itertools.count(1)
            self.marshal = Marshal()  # only its msg_map: type -> class
            self.marshal.msg_map[GENL_ID_CTRL] = ctrlmsg
            self.family_id, self.mcast_groups = self._resolve(family)
            self.marshal.msg_map[self.family_id] = msg_class
            self.msg_class = msg_class
            for name in groups:
                if name not in self.mcast_groups:
                    raise KernelError(errno.ENOENT, f"no multicast group {name!r} in {family}")
                self.sock.setsockopt(
                    SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.mcast_groups[name]
                )
        except BaseException:
            self.sock.close()
            raise

    def _resolve(self, family: str) -> tuple[int, dict[str, int]]:
        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", family)]
        try:
            (reply,) = self._request(msg, GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK)
        except KernelError as exc:
            if exc.code == errno.ENOENT:
                exc.message = f"generic netlink family {family!r} not found (no MPTCP?)"
            raise
        groups = {
            g.get_attr("CTRL_ATTR_MCAST_GRP_NAME"): g.get_attr("CTRL_ATTR_MCAST_GRP_ID")
            for g in reply.get_attr("CTRL_ATTR_MCAST_GROUPS", [])
        }
        return reply.get_attr("CTRL_ATTR_FAMILY_ID"), groups

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> GenlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, cmd: int, attrs: list[Any] | None = None, dump: bool = False
    ) -> list[nlmsg]:
        """Send one command of the bound family; return the reply messages.

        Raises :class:`KernelError` with the kernel's extack words on refusal.
        """
        msg = self.msg_class()
        msg["cmd"] = cmd
        msg["version"] = MPTCP_PM_VER
        msg["attrs"] = attrs or []
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_DUMP if dump else 0)
        return self._request(msg, self.family_id, flags)

    def _request(self, msg: nlmsg, msg_type: int, flags: int) -> list[nlmsg]:
        with self._lock:
            seq = next(self._seq) & 0xFFFFFFFF
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags
            msg["header"]["sequence_number"] = seq
            msg["header"]["pid"] = 0
            msg.encode()
            self.sock.send(msg.data)
            return self._collect(seq, dump=bool(flags & NLM_F_DUMP))

    def _collect(self, seq: int, dump: bool) -> list[nlmsg]:
        replies: list[nlmsg] = []
        while True:
            data = self.sock.recv(1 << 16)
            for msg in self.parse(data):
                header = msg["header"]
                if header["sequence_number"] != seq:
                    continue  # a late answer to an abandoned request
                if isinstance(msg, nlmsgerr_capped):
                    if msg["error"]:
                        code = -msg["error"]
                        text = msg.get_attr("NLMSGERR_ATTR_MSG") or os.strerror(code)
                        raise KernelError(code, text)
                    if not dump:
                        return replies  # the ACK of a do-request
                    continue
                if header["type"] == NLMSG_DONE:
                    return replies
                replies.append(msg)

    def parse(self, data: bytes) -> list[nlmsg]:
        return parse(data, self.marshal.msg_map)

    def recv_messages(self, timeout: float | None = None) -> list[nlmsg]:
        """Read one datagram of multicast messages (empty on timeout)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return []
        finally:
            self.sock.settimeout(None)
        return self.parse(data)


def parse(data: bytes, msg_map: Mapping[int, type[nlmsg]]) -> list[nlmsg]:
    """Split a datagram into decoded messages; errors and ACKs as ``nlmsgerr_capped``.

    ``msg_map`` maps the netlink message type (a genetlink family id) to its class.
    """
    out: list[nlmsg] = []
    offset = 0
    while offset + _HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size or offset + length > len(data):
            break
        cls = nlmsgerr_capped if mtype == NLMSG_ERROR else msg_map.get(mtype, nlmsg)
        msg = cls(data[offset : offset + length])
        msg.decode()
        out.append(msg)
        offset += (length + 3) & ~3
    return out
