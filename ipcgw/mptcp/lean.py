"""The path-manager commands a simulation sends at run time, without pyroute2's per-call cost.

Why: pyroute2 builds, encodes and parses message objects on every call (a
``limits()`` costs ~50 µs through ipcgw's :class:`~ipcgw.mptcp.genl.GenlSocket`,
~160 µs through ``pyroute2.MPTCP``); the kernel answers a GET_LIMITS in about
1 µs. A simulation flips endpoint flags and reads limits while its packets
wait, so those commands must cost about what the transport costs.

How: one ``AF_NETLINK``/``NETLINK_GENERIC`` command socket (``NETLINK_EXT_ACK``
and ``NETLINK_CAP_ACK`` on), the ``mptcp_pm`` family id resolved once. Each
request *shape* (command, attributes present, address families) is encoded
once into a ``bytearray``, with the offset of every value recorded; a call
``pack_into``-s its values and sequence number there and sends the buffer.
Replies and the kernel's extack words (``NLMSGERR_ATTR_MSG``) are read with
``struct`` from one preallocated receive buffer. Attribute numbers and types
follow ``include/uapi/linux/mptcp_pm.h`` and the kernel's
``Documentation/netlink/specs/mptcp_pm.yaml``; the encoding is byte for byte
what :mod:`ipcgw.mptcp.pm` makes pyroute2 send (``PORT`` host order,
``NLA_F_NESTED`` on address nests), and tests hold the two to the same kernel
state and the same error words.

Threads: one lock from send to the last reply; every reply's sequence number
is checked, so an answer left unread by a call that gave up (timeout,
interrupt) is skipped, never taken for another call's. The kernel handles a
genetlink "do" request inside ``sendmsg``: the answer is queued before
``send`` returns, so the first ``recv`` never blocks; the poll with a timeout
is for the case where it was lost (``ENOBUFS``) or never comes.

Values arrive validated (:mod:`ipcgw.mptcp.pm` checks ranges with the words a
user sees); addresses are text, as in ``pm``.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import select
import socket
import struct
import threading
from typing import Any

from ipcgw.mptcp import genl
from ipcgw.mptcp.genl import KernelError
from ipcgw.netns import socket_in_netns

__all__ = ["LeanPM", "pack_addr"]

# linux/netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_GENERIC = 16
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
NLMSGERR_ATTR_MSG = 1
# linux/genetlink.h
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# include/uapi/linux/mptcp_pm.h: MPTCP_PM_ATTR_* and MPTCP_PM_ADDR_ATTR_*
ATTR_ADDR, ATTR_RCV_ADD_ADDRS, ATTR_SUBFLOWS, ATTR_TOKEN, ATTR_LOC_ID, ATTR_ADDR_REMOTE = range(1, 7)
(ADDR_FAMILY, ADDR_ID, ADDR_ADDR4, ADDR_ADDR6, ADDR_PORT, ADDR_FLAGS,
 ADDR_IF_IDX) = range(1, 8)

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # nlattr: len, type
_SEQ = struct.Struct("=I")
_ERR = struct.Struct("=i")
_U8, _U16, _U32, _S32 = (struct.Struct(f"={c}") for c in "BHIi")
_TIMEOUT_MS = 5000

#: one attribute of a request: (type, struct code) or (type | NLA_F_NESTED, (attributes...))
Spec = tuple[Any, ...]


def pack_addr(addr: str) -> tuple[int, bytes]:
    """``"10.0.1.1"`` -> (AF_INET, 4 bytes); IPv6 likewise. Refused text gets
    ``ipaddress``'s words, as the pyroute2 path gives."""
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, addr)
    except (OSError, TypeError):
        pass
    try:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, addr)
    except (OSError, TypeError):
        ip = ipaddress.ip_address(addr)  # ValueError with the words pm's path gives
        return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), ip.packed


def addr_nest(
    addr: str | None = None,
    id: int | None = None,
    port: int | None = None,
    flags: int | None = None,
    ifindex: int | None = None,
) -> tuple[Spec, list[Any]]:
    """The address nest's shape and values, in the order :func:`ipcgw.mptcp.pm._addr_nest` uses."""
    spec: list[Spec] = []
    values: list[Any] = []
    if addr is not None:
        family, packed = pack_addr(addr)
        spec.append((ADDR_FAMILY, "H"))
        spec.append((ADDR_ADDR4, "4s") if family == socket.AF_INET else (ADDR_ADDR6, "16s"))
        values += (family, packed)
    if id is not None:
        spec.append((ADDR_ID, "B"))
        values.append(id)
    if port is not None:
        spec.append((ADDR_PORT, "H"))  # host order: a kernel fact, see DESIGN.md
        values.append(port)
    if flags is not None:
        spec.append((ADDR_FLAGS, "I"))
        values.append(flags)
    if ifindex is not None:
        spec.append((ADDR_IF_IDX, "i"))
        values.append(ifindex)
    return tuple(spec), values


class Template:
    """One request shape, encoded once: the bytes and where each value goes."""

    __slots__ = ("buf", "fields")

    def __init__(self, family_id: int, cmd: int, attrs: tuple[Spec, ...], flags: int) -> None:
        self.fields: list[tuple[struct.Struct, int]] = []
        body = bytearray(struct.pack("=BBH", cmd, genl.MPTCP_PM_VER, 0))
        self._encode(body, attrs, _HDR.size)
        self.buf = bytearray(_HDR.pack(_HDR.size + len(body), family_id, flags, 0, 0)) + body

    def _encode(self, out: bytearray, attrs: tuple[Spec, ...], base: int) -> None:
        for nla_type, kind in attrs:
            start = len(out)
            out += bytes(_NLA.size)
            if isinstance(kind, tuple):
                self._encode(out, kind, base)
                nla_type |= NLA_F_NESTED
            else:
                st = struct.Struct("=" + kind)
                self.fields.append((st, base + len(out)))
                out += bytes(st.size)
            _NLA.pack_into(out, start, len(out) - start, nla_type)
            out += bytes(-len(out) % 4)

    def fill(self, seq: int, values: list[Any]) -> bytearray:
        buf = self.buf
        _SEQ.pack_into(buf, 8, seq)
        for (st, off), value in zip(self.fields, values, strict=True):
            st.pack_into(buf, off, value)
        return buf


class LeanPM:
    """The run-time path-manager commands on one command socket of one namespace.

    Thread-safe (one lock from send to reply). Refusals raise
    :class:`~ipcgw.mptcp.genl.KernelError` with the kernel's words and ``op``.
    """

    def __init__(self, netns: str | None = None, timeout: float = _TIMEOUT_MS / 1000, *,
                 sock: socket.socket | None = None, family_id: int | None = None) -> None:
        """``sock`` and ``family_id`` are for tests: a datagram socket whose peer
        answers as the kernel would, and the id it stands for."""
        self.netns = netns
        self.timeout_ms = int(timeout * 1000)
        if sock is None:
            sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
                sock.bind((0, 0))
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        try:
            self._lock = threading.Lock()
            self._seq = itertools.count(1)
            self._rbuf = bytearray(1 << 16)
            self._rview = memoryview(self._rbuf)
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
            self._templates: dict[tuple[int, tuple[Spec, ...]], Template] = {}
            self.family_id = self._resolve(genl.MPTCP_PM_NAME) if family_id is None else family_id
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LeanPM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the commands -------------------------------------------------------------

    def limits(self) -> dict[str, int]:
        reply = self._do("limits.get", genl.MPTCP_PM_CMD_GET_LIMITS, (), [], want_reply=True)
        attrs = _attrs(reply, 0, len(reply))
        return {
            "subflows": _u32(reply, attrs.get(ATTR_SUBFLOWS)),
            "add_addr_accepted": _u32(reply, attrs.get(ATTR_RCV_ADD_ADDRS)),
        }

    def set_limits(self, subflows: int | None, add_addr_accepted: int | None) -> None:
        spec: list[Spec] = []
        values: list[int] = []
        if subflows is not None:
            spec.append((ATTR_SUBFLOWS, "I"))
            values.append(subflows)
        if add_addr_accepted is not None:
            spec.append((ATTR_RCV_ADD_ADDRS, "I"))
            values.append(add_addr_accepted)
        self._do("limits.set", genl.MPTCP_PM_CMD_SET_LIMITS, tuple(spec), values)

    def endpoint(self, id: int) -> dict[str, Any]:
        """GET_ADDR by id -> the dict :func:`ipcgw.mptcp.pm._endpoint` makes."""
        reply = self._do("endpoint.get", genl.MPTCP_PM_CMD_GET_ADDR,
                         ((ATTR_ADDR, ((ADDR_ID, "B"),)),), [id], want_reply=True)
        off = _attrs(reply, 0, len(reply)).get(ATTR_ADDR)
        if off is None:
            raise KernelError(errno.EPROTO, "GET_ADDR reply without an address", "endpoint.get")
        return _endpoint(reply, off)

    def set_endpoint_flags(self, id: int, flags: int) -> None:
        self._do("endpoint.set_flags", genl.MPTCP_PM_CMD_SET_FLAGS,
                 ((ATTR_ADDR, ((ADDR_ID, "B"), (ADDR_FLAGS, "I"))),), [id, flags])

    def announce(self, token: int, addr: str, id: int, port: int | None, ifindex: int | None) -> None:
        spec, values = addr_nest(addr, id, port, genl.MPTCP_PM_ADDR_FLAG_SIGNAL, ifindex)
        self._do("pm.announce", genl.MPTCP_PM_CMD_ANNOUNCE,
                 ((ATTR_TOKEN, "I"), (ATTR_ADDR, spec)), [token, *values])

    def remove(self, token: int, id: int) -> None:
        self._do("pm.remove", genl.MPTCP_PM_CMD_REMOVE,
                 ((ATTR_TOKEN, "I"), (ATTR_LOC_ID, "B")), [token, id])

    def subflow_create(self, token: int, local_addr: str, remote_addr: str, remote_port: int,
                       local_id: int | None, local_port: int | None, flags: int | None,
                       ifindex: int | None) -> None:
        lspec, lvalues = addr_nest(local_addr, local_id, local_port, flags, ifindex)
        rspec, rvalues = addr_nest(remote_addr, port=remote_port)
        self._do("pm.subflow_create", genl.MPTCP_PM_CMD_SUBFLOW_CREATE,
                 ((ATTR_TOKEN, "I"), (ATTR_ADDR, lspec), (ATTR_ADDR_REMOTE, rspec)),
                 [token, *lvalues, *rvalues])

    def subflow_destroy(self, token: int, local_addr: str, local_port: int, remote_addr: str,
                        remote_port: int) -> None:
        self._four("pm.subflow_destroy", genl.MPTCP_PM_CMD_SUBFLOW_DESTROY, token,
                   local_addr, local_port, None, remote_addr, remote_port)

    def set_flags(self, token: int, local_addr: str, local_port: int, remote_addr: str,
                  remote_port: int, flags: int) -> None:
        self._four("pm.set_flags", genl.MPTCP_PM_CMD_SET_FLAGS, token,
                   local_addr, local_port, flags, remote_addr, remote_port)

    def _four(self, op: str, cmd: int, token: int, local_addr: str, local_port: int,
              flags: int | None, remote_addr: str, remote_port: int) -> None:
        lspec, lvalues = addr_nest(local_addr, port=local_port, flags=flags)
        rspec, rvalues = addr_nest(remote_addr, port=remote_port)
        self._do(op, cmd, ((ATTR_TOKEN, "I"), (ATTR_ADDR, lspec), (ATTR_ADDR_REMOTE, rspec)),
                 [token, *lvalues, *rvalues])

    # -- the wire -----------------------------------------------------------------

    def template(self, cmd: int, spec: tuple[Spec, ...], want_reply: bool = False) -> Template:
        """The pre-built request of this shape (built on first use)."""
        key = (cmd | (0x100 if want_reply else 0), spec)
        tpl = self._templates.get(key)
        if tpl is None:
            # a "get" asks for no ACK: its answer is the reply or the error, one message
            flags = NLM_F_REQUEST | (0 if want_reply else NLM_F_ACK)
            tpl = self._templates[key] = Template(self.family_id, cmd, spec, flags)
        return tpl

    def _do(self, op: str, cmd: int, spec: tuple[Spec, ...], values: list[Any],
            want_reply: bool = False) -> bytes:
        """Send one request; the reply's attributes (the bytes past the genl header)
        or b"" for an ACK."""
        tpl = self.template(cmd, spec, want_reply)
        with self._lock:
            seq = self._next_seq()
            self.sock.send(tpl.fill(seq, values))
            return self._answer(op, seq, self.family_id)

    def _next_seq(self) -> int:
        return next(self._seq) & 0xFFFFFFFF or self._next_seq()  # 0 is never ours

    def _answer(self, op: str, seq: int, reply_type: int) -> bytes:
        """Read until the message with our sequence number (a copy: the buffer is
        the next caller's once the lock is released); skip any other."""
        buf, view = self._rbuf, self._rview
        while True:
            n = self._recv(op)
            off = 0
            while off + _HDR.size <= n:
                length, mtype, flags, mseq, _pid = _HDR.unpack_from(buf, off)
                if length < _HDR.size or off + length > n:
                    break
                if mseq == seq:
                    if mtype == NLMSG_ERROR:
                        _raise_if_error(buf, off, length, flags, op)
                        return b""
                    if mtype == reply_type and length >= _HDR.size + 4:
                        return bytes(view[off + _HDR.size + 4 : off + length])
                    if mtype == NLMSG_DONE:
                        return b""
                off += (length + 3) & ~3

    def _recv(self, op: str) -> int:
        try:
            return self.sock.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise KernelError(errno.ENOBUFS, "the kernel's answer was lost (netlink receive "
                                  "buffer overrun); the command may have taken effect", op) from None
            raise
        if not self._poll.poll(self.timeout_ms):
            raise KernelError(errno.ETIMEDOUT, f"no answer from the kernel within "
                              f"{self.timeout_ms / 1000:g} s", op)
        return self.sock.recv_into(self._rbuf)

    def _resolve(self, family: str) -> int:
        name = family.encode() + b"\0"
        nla = _NLA.pack(_NLA.size + len(name), CTRL_ATTR_FAMILY_NAME) + name
        nla += bytes(-len(nla) % 4)
        body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + nla
        with self._lock:
            seq = self._next_seq()
            self.sock.send(_HDR.pack(_HDR.size + len(body), GENL_ID_CTRL, NLM_F_REQUEST, seq, 0) + body)
            try:
                reply = self._answer("resolve", seq, GENL_ID_CTRL)
            except KernelError as exc:
                if exc.code == errno.ENOENT:
                    exc.message = f"generic netlink family {family!r} not found (no MPTCP?)"
                raise
        off = _attrs(reply, 0, len(reply)).get(CTRL_ATTR_FAMILY_ID)
        if off is None:
            raise KernelError(errno.EPROTO, f"no id for generic netlink family {family!r}")
        return int(_U16.unpack_from(reply, off)[0])


def _attrs(data: bytes | bytearray, off: int, end: int) -> dict[int, int]:
    """type -> offset of the payload, for the attributes in ``data[off:end]``."""
    out: dict[int, int] = {}
    while off + _NLA.size <= end:
        length, nla_type = _NLA.unpack_from(data, off)
        if length < _NLA.size or off + length > end:
            break
        out[nla_type & NLA_TYPE_MASK] = off + _NLA.size
        off += (length + 3) & ~3
    return out


def _u32(data: bytes, off: int | None) -> int:
    return 0 if off is None else int(_U32.unpack_from(data, off)[0])


def _raise_if_error(buf: bytearray, off: int, length: int, flags: int, op: str) -> None:
    """An NLMSG_ERROR: nothing for an ACK, else KernelError with the extack words."""
    end = off + length
    (code,) = _ERR.unpack_from(buf, off + _HDR.size)
    if code == 0:
        return
    code = -code
    text = ""
    echoed = off + _HDR.size + 4  # the request's header (all of it without NETLINK_CAP_ACK)
    if flags & NLM_F_ACK_TLVS and echoed + _HDR.size <= end:
        orig_len = _HDR.unpack_from(buf, echoed)[0]
        tlvs = echoed + (_HDR.size if flags & NLM_F_CAPPED else (orig_len + 3) & ~3)
        at = _attrs(buf, tlvs, end).get(NLMSGERR_ATTR_MSG)
        if at is not None:
            alen = _NLA.unpack_from(buf, at - _NLA.size)[0] - _NLA.size
            text = bytes(buf[at : at + alen]).split(b"\0", 1)[0].decode(errors="replace")
    raise KernelError(code, text or os.strerror(code), op)


def _endpoint(data: bytes, nest: int) -> dict[str, Any]:
    nla_len = _NLA.unpack_from(data, nest - _NLA.size)[0]
    a = _attrs(data, nest, nest - _NLA.size + nla_len)
    addr = None
    if (at := a.get(ADDR_ADDR4)) is not None:
        addr = socket.inet_ntop(socket.AF_INET, bytes(data[at : at + 4]))
    elif (at := a.get(ADDR_ADDR6)) is not None:
        addr = socket.inet_ntop(socket.AF_INET6, bytes(data[at : at + 16]))
    flags = _u32(data, a.get(ADDR_FLAGS))
    return {
        "id": None if (at := a.get(ADDR_ID)) is None else data[at],
        "addr": addr,
        "port": 0 if (at := a.get(ADDR_PORT)) is None else _U16.unpack_from(data, at)[0],
        "flags": flags,
        "flag_names": [name for name, bit in genl.ADDR_FLAG_NAMES.items() if flags & bit],
        "ifindex": 0 if (at := a.get(ADDR_IF_IDX)) is None else _S32.unpack_from(data, at)[0],
    }
