"""TCP and MPTCP counters from sock_diag (inet_diag) — what the seed read from ``ss -i``.

* Per subflow: the TCP sockets' ``tcp_info`` (rtt, rttvar, min_rtt, rcv_rtt,
  bytes sent / received / acked / retransmitted, total_retrans, lost, cwnd,
  delivery rate). A subflow is tied to its MPTCP connection by the MPTCP
  token inside ``INET_DIAG_ULP_INFO``, which pyroute2 leaves undecoded; the
  classes below decode it (``INET_ULP_INFO_MPTCP`` → ``MPTCP_SUBFLOW_ATTR_*``).
* Per connection: ``struct mptcp_info`` from a protocol-262 dump, which needs
  ``INET_DIAG_REQ_PROTOCOL`` in the request (the u8 ``sdiag_protocol`` cannot
  hold 262).

I/O goes through pyroute2's ``DiagSocket`` built on a socket created in the
target namespace. pyroute2 binds a socket to the thread that made it, so a
:class:`MetricsReader` must be used from one thread (the gateway's stats
thread); make one per thread otherwise.

Units: times in µs as the kernel gives them, ``delivery_rate`` in bytes/s.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_MATCH, NLM_F_REQUEST, NLM_F_ROOT, nla
from pyroute2.netlink.diag import (
    SOCK_DIAG_BY_FAMILY,
    SS_ESTABLISHED,
    DiagSocket,
    MarshalDiag,
    inet_diag_msg,
    inet_diag_req,
)
from pyroute2.netlink.nlsocket import NetlinkSocket

from ipcgw.netns import socket_in_netns

__all__ = ["MetricsReader", "decode_mptcp_info", "subflow_record"]

IPPROTO_MPTCP = 262
INET_DIAG_INFO = 2
# established and closing states: a subflow or connection still moving data
STATES = (1 << SS_ESTABLISHED) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11)

# MPTCP_SUBFLOW_FLAG_* (include/uapi/linux/mptcp.h)
MPTCP_SUBFLOW_FLAG_BKUP_REM = 1 << 4
MPTCP_SUBFLOW_FLAG_BKUP_LOC = 1 << 5


class inet_diag_req_v2(inet_diag_req):
    """The request with its attributes; only PROTOCOL is used (for MPTCP)."""

    _nlmsg_base__compiled_nla = False
    nla_map = (
        ("INET_DIAG_REQ_NONE", "none"),
        ("INET_DIAG_REQ_BYTECODE", "hex"),
        ("INET_DIAG_REQ_SK_BPF_STORAGES", "hex"),
        ("INET_DIAG_REQ_PROTOCOL", "uint32"),
    )


def _replace(nla_map: tuple[tuple[str, str], ...], name: str, kind: str) -> tuple[Any, ...]:
    return tuple((n, kind if n == name else k) for n, k in nla_map)


class tcp_diag_msg(inet_diag_msg):
    """A TCP socket, with the ULP info decoded (it says which MPTCP connection)."""

    _nlmsg_base__compiled_nla = False
    nla_map = _replace(inet_diag_msg.nla_map, "INET_DIAG_ULP_INFO", "ulp_info")

    class ulp_info(nla):
        prefix = "INET_ULP_INFO_"
        nla_map = (
            ("INET_ULP_INFO_UNSPEC", "none"),
            ("INET_ULP_INFO_NAME", "asciiz"),
            ("INET_ULP_INFO_TLS", "hex"),
            ("INET_ULP_INFO_MPTCP", "mptcp_subflow"),
        )

        class mptcp_subflow(nla):
            prefix = "MPTCP_SUBFLOW_ATTR_"
            nla_map = (
                ("MPTCP_SUBFLOW_ATTR_UNSPEC", "none"),
                ("MPTCP_SUBFLOW_ATTR_TOKEN_REM", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_TOKEN_LOC", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_RELWRITE_SEQ", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_MAP_SEQ", "uint64"),
                ("MPTCP_SUBFLOW_ATTR_MAP_SFSEQ", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_SSN_OFFSET", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_MAP_DATALEN", "uint16"),
                ("MPTCP_SUBFLOW_ATTR_FLAGS", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_ID_REM", "uint8"),
                ("MPTCP_SUBFLOW_ATTR_ID_LOC", "uint8"),
                ("MPTCP_SUBFLOW_ATTR_PAD", "none"),
            )


class mptcp_diag_msg(inet_diag_msg):
    """An MPTCP socket: its INET_DIAG_INFO is ``struct mptcp_info``, not tcp_info."""

    _nlmsg_base__compiled_nla = False
    nla_map = _replace(inet_diag_msg.nla_map, "INET_DIAG_INFO", "cdata")


# struct mptcp_info, in the order fields were added; a kernel sends a prefix
_MPTCP_INFO = (
    ("subflows", "B"), ("add_addr_signal", "B"), ("add_addr_accepted", "B"),
    ("subflows_max", "B"), ("add_addr_signal_max", "B"), ("add_addr_accepted_max", "B"),
    (None, "2x"), ("flags", "I"), ("token", "I"), ("write_seq", "Q"), ("snd_una", "Q"),
    ("rcv_nxt", "Q"), ("local_addr_used", "B"), ("local_addr_max", "B"),
    ("csum_enabled", "B"), (None, "x"), ("retransmits", "I"), ("bytes_retrans", "Q"),
    ("bytes_sent", "Q"), ("bytes_received", "Q"), ("bytes_acked", "Q"),
    ("subflows_total", "B"), ("endp_laminar_max", "B"), ("endp_fullmesh_max", "B"),
    (None, "x"), ("last_data_sent", "I"), ("last_data_recv", "I"), ("last_ack_recv", "I"),
)


def decode_mptcp_info(data: bytes) -> dict[str, int]:
    """``struct mptcp_info`` -> dict, accepting the shorter struct of older kernels."""
    out: dict[str, int] = {}
    offset = 0
    for name, fmt in _MPTCP_INFO:
        size = struct.calcsize("=" + fmt)
        if offset + size > len(data):
            break
        if name is not None:
            (out[name],) = struct.unpack_from("=" + fmt, data, offset)
        offset += size
    return out


def _endpoints(msg: Any) -> dict[str, Any]:
    return {
        "saddr": msg["idiag_src"],
        "sport": msg["idiag_sport"],
        "daddr": msg["idiag_dst"],
        "dport": msg["idiag_dport"],
        "state": msg["idiag_state"],
    }


def subflow_record(msg: Any) -> dict[str, Any] | None:
    """A decoded TCP socket -> the subflow's stats, or None if it is not an MPTCP subflow."""
    ulp = msg.get_attr("INET_DIAG_ULP_INFO")
    if ulp is None or ulp.get_attr("INET_ULP_INFO_NAME") != "mptcp":
        return None
    sf = ulp.get_attr("INET_ULP_INFO_MPTCP")
    rec = _endpoints(msg)
    if sf is not None:
        flags = sf.get_attr("MPTCP_SUBFLOW_ATTR_FLAGS") or 0
        rec.update(
            token=sf.get_attr("MPTCP_SUBFLOW_ATTR_TOKEN_LOC"),
            remote_token=sf.get_attr("MPTCP_SUBFLOW_ATTR_TOKEN_REM"),
            loc_id=sf.get_attr("MPTCP_SUBFLOW_ATTR_ID_LOC"),
            rem_id=sf.get_attr("MPTCP_SUBFLOW_ATTR_ID_REM"),
            backup=bool(flags & MPTCP_SUBFLOW_FLAG_BKUP_LOC),
            peer_backup=bool(flags & MPTCP_SUBFLOW_FLAG_BKUP_REM),
        )
    info = msg.get_attr("INET_DIAG_INFO")
    if info is not None:
        rec.update(
            rtt=info["tcpi_rtt"],
            rttvar=info["tcpi_rttvar"],
            min_rtt=info["tcpi_min_rtt"],
            rcv_rtt=info["tcpi_rcv_rtt"],
            bytes_sent=info["tcpi_bytes_sent"],
            bytes_received=info["tcpi_bytes_received"],
            bytes_acked=info["tcpi_bytes_acked"],
            bytes_retrans=info["tcpi_bytes_retrans"],
            total_retrans=info["tcpi_total_retrans"],
            lost=info["tcpi_lost"],
            cwnd=info["tcpi_snd_cwnd"],
            delivery_rate=info["tcpi_delivery_rate"],
            pacing_rate=info["tcpi_pacing_rate"],
            segs_out=info["tcpi_segs_out"],
            segs_in=info["tcpi_segs_in"],
        )
    return rec


class _Diag(DiagSocket):
    """pyroute2's DiagSocket on a socket made in a chosen namespace."""

    def __init__(self, netns: str | None, msg_class: type[inet_diag_msg]) -> None:
        sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        NetlinkSocket.__init__(self, NETLINK_SOCK_DIAG, use_socket=sock)
        self._own_sock = sock
        marshal = MarshalDiag()
        marshal.msg_map = {socket.AF_INET: msg_class, socket.AF_INET6: msg_class}
        self.set_marshal(marshal)
        self.bind()

    def dump(self, family: int, protocol: int, states: int) -> list[Any]:
        req = inet_diag_req_v2()
        req["sdiag_family"] = family
        req["sdiag_protocol"] = protocol & 0xFF
        req["idiag_states"] = states
        req["idiag_ext"] = 1 << (INET_DIAG_INFO - 1)
        if protocol > 0xFF:
            req["attrs"] = [("INET_DIAG_REQ_PROTOCOL", protocol)]
        return list(
            self.nlm_request(req, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH)
        )

    def close(self, code: int = 0) -> None:
        try:
            super().close()
        finally:
            self._own_sock.close()


class MetricsReader:
    """Reads every MPTCP connection and subflow of one namespace.

    Single-threaded (see the module docstring); the sockets are made on first use.
    """

    def __init__(self, netns: str | None = None, families: tuple[int, ...] = (socket.AF_INET,
                                                                                socket.AF_INET6)):
        self.netns = netns
        self.families = families
        self._tcp: _Diag | None = None
        self._mptcp: _Diag | None = None
        self._thread = threading.get_ident()

    def _sockets(self) -> tuple[_Diag, _Diag]:
        if self._tcp is None or self._mptcp is None:
            self._thread = threading.get_ident()
            self._tcp = _Diag(self.netns, tcp_diag_msg)
            self._mptcp = _Diag(self.netns, mptcp_diag_msg)
        elif threading.get_ident() != self._thread:
            raise RuntimeError("a MetricsReader is bound to the thread that first used it")
        return self._tcp, self._mptcp

    def subflows(self, token: int | None = None) -> list[dict[str, Any]]:
        tcp, _ = self._sockets()
        out = []
        for family in self.families:
            for msg in tcp.dump(family, socket.IPPROTO_TCP, STATES):
                rec = subflow_record(msg)
                if rec is not None and (token is None or rec.get("token") == token):
                    out.append(rec)
        return out

    def connections(self, token: int | None = None) -> list[dict[str, Any]]:
        _, mptcp = self._sockets()
        out = []
        for family in self.families:
            for msg in mptcp.dump(family, IPPROTO_MPTCP, STATES):
                rec = _endpoints(msg)
                raw = msg.get_attr("INET_DIAG_INFO")
                if raw:
                    rec.update(decode_mptcp_info(raw))
                if token is None or rec.get("token") == token:
                    out.append(rec)
        return out

    def snapshot(self) -> tuple[float, list[dict[str, Any]], list[dict[str, Any]]]:
        """(time, connections, subflows): the content of one ``Stats`` message."""
        now = time.time()
        return now, self.connections(), self.subflows()

    def close(self) -> None:
        for diag in (self._tcp, self._mptcp):
            if diag is not None:
                diag.close()
        self._tcp = self._mptcp = None

    def __enter__(self) -> MetricsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
