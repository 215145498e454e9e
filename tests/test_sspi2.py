"""The later mptcpd plugin protocol (codec=sspi2): exact bytes as its ns-3 program and shell writes them."""

from __future__ import annotations

import struct

import pytest

from ipcgw import sspi2
from ipcgw.errors import CodecError, DecodeError
from ipcgw.framing import make_framer
from ipcgw.messages import Bye, Command, Ping, Report
from ipcgw.mptcp.policy import RssiPolicy
from ipcgw.url import parse_url


def c_struct_cmd(cmd: int, value: int, junk: bytes = bytes(247)) -> bytes:
    """``struct sspi_message`` with an ``sspi_cmd_message`` in ``data``, as a C compiler
    lays it out: type, cmd, 3 bytes padding, int cmd_value, the rest of data[255]."""
    return bytes([0x01, cmd]) + b"\0\0\0" + struct.pack("=i", value) + junk


def c_struct_data(rssi: int, junk: bytes = bytes(251)) -> bytes:
    return bytes([0x02]) + struct.pack("=i", rssi) + junk


def test_the_header_echo_example_is_command_3_value_4():
    # echo -en "\01\03\00\00\00\04\c" > /tmp/mptcp-ns3-fifo  (mptcp_ns3.h)
    assert sspi2.decode(b"\x01\x03\x00\x00\x00\x04") == Command(
        0, "endpoint.set_flags", {"id": 4, "backup": True})


@pytest.mark.parametrize(("cmd", "value", "expected"), [
    (1, 30, Command(0, "run.tcpdump", {"value": 30})),
    (2, 2, Command(0, "endpoint.delete", {"id": 2})),
    (3, 2, Command(0, "endpoint.set_flags", {"id": 2, "backup": True})),
    (4, 2, Command(0, "endpoint.set_flags", {"id": 2, "backup": False})),
    (5, 0, Bye("sspi2 STOP_RV_MSG")),
    (6, 10, Command(0, "run.iperf", {"value": 10})),
])
def test_full_256_byte_commands(cmd, value, expected):
    frame = c_struct_cmd(cmd, value)
    assert len(frame) == 256
    assert sspi2.decode(frame) == expected
    # what follows the struct is the writer's uninitialised memory: ignored
    assert sspi2.decode(c_struct_cmd(cmd, value, b"\xaa" * 247)) == expected


def test_rssi_data_becomes_a_wlan_report_that_rssi_policy_reads():
    report = sspi2.decode(c_struct_data(-85, b"\x55" * 251))
    assert report == Report(0.0, sspi2.WLAN_PATH, {"rssi_dbm": -85})
    assert sspi2.WLAN_PATH == RssiPolicy().wlan_id == 2
    assert sspi2.decode(b"\x02\x01") == Report(0.0, 2, {"rssi_dbm": 1})  # echo -en "\02\01\c"


@pytest.mark.parametrize(("data", "words"), [
    (b"", "1 to 256 bytes"),
    (bytes(257), "1 to 256 bytes"),
    (b"\x03" + bytes(255), "unknown sspi2 message type 0x03"),
    (c_struct_cmd(0, 1), "UNDEFINED"),
    (c_struct_cmd(9, 1), "sspi2 command 9"),
])
def test_refused_with_words(data, words):
    with pytest.raises(DecodeError, match=words):
        sspi2.decode(data)


@pytest.mark.parametrize("msg", [
    Command(0, "endpoint.set_flags", {"id": 2, "backup": True}), Command(0, "endpoint.delete", {"id": 1}),
    Command(0, "run.iperf", {"value": 5}), Bye("sspi2 STOP_RV_MSG"), Report(0.0, 2, {"rssi_dbm": -60}),
])
def test_encode_writes_what_the_ns3_program_writes(msg):
    data = sspi2.encode(msg)
    assert len(data) == 256 and sspi2.decode(data) == msg


def test_encode_refuses_what_it_cannot_say():
    with pytest.raises(CodecError, match="cannot express"):
        sspi2.encode(Ping(1, b""))
    with pytest.raises(CodecError, match="int32"):
        sspi2.encode(Command(0, "endpoint.delete", {"id": 1 << 40}))


def test_read_framing_cuts_like_the_plugin_read():
    """read(fd, &msg, 256): whole writes come in 256-byte reads, a short write is a short read."""
    decoder = make_framer("read:256").decoder()
    two = c_struct_cmd(3, 2) + c_struct_data(-70)
    assert decoder.feed(two) == [c_struct_cmd(3, 2), c_struct_data(-70)]
    assert decoder.feed(b"\x01\x03\x00\x00\x00\x04") == [b"\x01\x03\x00\x00\x00\x04"]
    assert decoder.pending == 0


def test_url_serves_it_on_the_plugin_fifo():
    ep = parse_url("fifo:///tmp?codec=sspi2")
    assert (ep.codec, ep.framing) == ("sspi2", "read:256")
