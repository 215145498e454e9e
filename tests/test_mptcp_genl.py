"""Decode recorded mptcp_pm netlink datagrams and encode requests; no root needed.

The datagrams were recorded on the 6.18 kernel (family id 0x1c there): a
scenario-1 client's CREATED and SUB_ESTABLISHED, the extack error of REMOVE
with a bad token, and an endpoint dump.
"""

from __future__ import annotations

import errno
import struct

from ipcgw.mptcp import genl
from ipcgw.mptcp.events import decode_event, format_event
from ipcgw.mptcp.genl import mptcp_event_msg, mptcp_pm_msg, nlmsgerr_capped, parse
from ipcgw.mptcp.metrics import decode_mptcp_info
from ipcgw.mptcp.pm import _addr_nest, _endpoint, flags_to_names, names_to_flags

FAMILY = 0x1C

CREATED = bytes.fromhex(
    "540000001c000000000000000000000001010000080001006597181c0600020002000000080005000a000101"
    "080007000a00010206000900c28c000006000a001451000005000300000000000500040000000000"
)
SUB_ESTABLISHED = bytes.fromhex(
    "640000001c00000000000000000000000a010000080001006597181c0600020002000000080005000a000201"
    "080007000a00010206000900bc73000006000a00145100000500030002000000050004000000000005000b00"
    "0000000008000f0003000000"
)
ERROR_INVALID_TOKEN = bytes.fromhex(
    "400000000200000302000000021b6df0eaffffff240000001c000500020000000000000012000100696e7661"
    "6c696420746f6b656e0000000800020014000000"
)
DUMP = bytes.fromhex(
    "480000001c00020003000000021b6df0030100003400018006000100020000000600050000000000050002000"
    "200000008000600020000000800070003000000080003000a000201"
)
DONE = bytes.fromhex("140000000300020003000000021b6df000000000")


def test_created_event_decodes_every_attribute() -> None:
    (msg,) = parse(CREATED, {FAMILY: mptcp_event_msg})
    ev = decode_event(msg, now=1.0)
    assert ev is not None and ev.kind == "CREATED"
    assert ev.attrs == {
        "token": 0x1C189765, "family": 2, "saddr": "10.0.1.1", "daddr": "10.0.1.2",
        "sport": 0xC28C, "dport": 5201, "loc_id": 0, "rem_id": 0,
    }
    assert ev.to_message().kind == "CREATED"


def test_sub_established_ports_are_network_order() -> None:
    (msg,) = parse(SUB_ESTABLISHED, {FAMILY: mptcp_event_msg})
    ev = decode_event(msg)
    assert ev is not None and ev.kind == "SUB_ESTABLISHED"
    assert ev.attrs["dport"] == 5201  # 0x1451 on the wire, big-endian
    assert ev.attrs["sport"] == 0xBC73
    assert (ev.attrs["saddr"], ev.attrs["daddr"]) == ("10.0.2.1", "10.0.1.2")
    assert (ev.attrs["loc_id"], ev.attrs["rem_id"], ev.attrs["backup"]) == (2, 0, 0)
    assert ev.attrs["if_idx"] == 3
    line = format_event(ev)
    assert "token=0x1c189765" in line and "saddr=10.0.2.1:48243" in line and "if_idx=3" in line


def test_every_event_kind_is_named() -> None:
    assert set(genl.EVENT_NAMES.values()) == {
        "CREATED", "ESTABLISHED", "CLOSED", "ANNOUNCED", "REMOVED", "SUB_ESTABLISHED",
        "SUB_CLOSED", "SUB_PRIORITY", "LISTENER_CREATED", "LISTENER_CLOSED",
    }
    for number, name in genl.EVENT_NAMES.items():
        assert getattr(genl, f"MPTCP_EVENT_{name}") == number


def test_extack_words_of_an_error() -> None:
    (msg,) = parse(ERROR_INVALID_TOKEN, {FAMILY: mptcp_pm_msg})
    assert isinstance(msg, nlmsgerr_capped)
    assert -msg["error"] == errno.EINVAL
    assert msg.get_attr("NLMSGERR_ATTR_MSG") == "invalid token"
    assert msg["orig_type"] == FAMILY


def test_endpoint_dump_decodes() -> None:
    msgs = parse(DUMP, {FAMILY: mptcp_pm_msg}) + parse(DONE, {FAMILY: mptcp_pm_msg})
    ep = _endpoint(msgs[0].get_attr("MPTCP_PM_ATTR_ADDR"))
    assert ep == {"id": 2, "addr": "10.0.2.1", "port": 0, "flags": 2,
                  "flag_names": ["subflow"], "ifindex": 3}
    assert msgs[1]["header"]["type"] == 3  # NLMSG_DONE


def test_request_encoding_nested_flag_and_host_order_port() -> None:
    msg = mptcp_pm_msg()
    msg["cmd"] = genl.MPTCP_PM_CMD_SUBFLOW_CREATE
    msg["version"] = 1
    msg["attrs"] = [
        ("MPTCP_PM_ATTR_TOKEN", 0xDEADBEEF),
        ("MPTCP_PM_ATTR_ADDR", _addr_nest("10.0.2.1", 7)),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_nest("10.0.1.2", port=5201)),
    ]
    msg["header"]["type"] = FAMILY
    msg.encode()
    data = bytes(msg.data)
    # walk the top-level attributes after the 20-byte nlmsg+genl header
    offset, types = 20, []
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        types.append(kind)
        if kind & 0x7FFF == 6:  # ADDR_REMOTE: find PORT (5) inside, host order
            inner = offset + 4
            while inner < offset + length:
                ilen, ikind = struct.unpack_from("=HH", data, inner)
                if ikind == 5:
                    assert struct.unpack_from("=H", data, inner + 4)[0] == 5201
                inner += (ilen + 3) & ~3
        offset += (length + 3) & ~3
    assert types == [4, 1 | 0x8000, 6 | 0x8000]
    (back,) = parse(data, {FAMILY: mptcp_pm_msg})
    assert back.get_attr("MPTCP_PM_ATTR_TOKEN") == 0xDEADBEEF
    remote = back.get_attr("MPTCP_PM_ATTR_ADDR_REMOTE")
    assert remote.get_attr("MPTCP_PM_ADDR_ATTR_PORT") == 5201
    assert remote.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4") == "10.0.1.2"


def test_flag_names_round_trip() -> None:
    assert names_to_flags("signal,backup") == genl.MPTCP_PM_ADDR_FLAG_SIGNAL | 4
    assert names_to_flags(["subflow"]) == 2
    assert flags_to_names(names_to_flags("subflow fullmesh")) == ["subflow", "fullmesh"]
    try:
        names_to_flags("bogus")
    except ValueError as exc:
        assert "bogus" in str(exc)
    else:
        raise AssertionError("unknown flag accepted")


def test_mptcp_info_decodes_full_and_short_structs() -> None:
    full = struct.pack("=6B2xIIQQQ3BxIQQQQ4BIII", 2, 1, 0, 8, 1, 8, 0x3, 0xABCD, 10, 20, 30,
                       1, 2, 0, 5, 100, 200, 300, 400, 3, 0, 0, 0, 7, 8, 9)
    info = decode_mptcp_info(full)
    assert info["subflows"] == 2 and info["token"] == 0xABCD and info["bytes_sent"] == 200
    assert info["last_ack_recv"] == 9
    short = decode_mptcp_info(full[:40])
    assert short["rcv_nxt"] == 30 and "bytes_sent" not in short
