"""The later sspi protocol of the mptcpd plugin: 256-byte ``struct sspi_message``.

The plugin's later revision (``include/mptcpd/mptcp_ns3.h``) reads, from the
FIFO ``/tmp/mptcp-ns3-fifo``, ``struct sspi_message { unsigned char type;
char data[255]; }`` with one ``read(fd, &msg, 256)`` per message, and casts
``data`` to one of:

- type 0x01, ``struct sspi_cmd_message { unsigned char cmd; int cmd_value; }``:
  ``cmd`` at byte 1, three bytes of struct padding, ``cmd_value`` at bytes 5-8
  in the host's byte order;
- type 0x02, ``struct sspi_data_message { int rssi; }``: bytes 1-4, host order.

A writer may be short: the header's own example ``echo -en "\\01\\03\\00\\00\\00\\04"``
is 6 bytes, meant as "command 3, value 4": the three zeros are the padding and
``04`` the low byte of a little-endian ``cmd_value``. The plugin keeps whatever
its buffer held for the bytes a short read did not fill; here they are zero.
Bytes after the struct (the rest of ``data[255]``, often uninitialised memory
of the writer) are ignored, as the plugin ignores them.

=======================  =====  ==============================================
command                  value  message
=======================  =====  ==============================================
TCPDUMP          1       secs   Command("run.tcpdump", {"value": v})
DEL              2       id     Command("endpoint.delete", {"id": v})
BACKUP_FLAG_ON   3       id     Command("endpoint.set_flags", {"id": v, "backup": True})
CLEAR_FLAGS      4       id     Command("endpoint.set_flags", {"id": v, "backup": False})
STOP_RV_MSG      5       any    Bye("sspi2 STOP_RV_MSG")
IPERF_START      6       secs   Command("run.iperf", {"value": v})
data (type 0x02)         rssi   Report(path_id=WLAN_PATH, metrics={"rssi_dbm": v})
=======================  =====  ==============================================

The RSSI report is on the WLAN path (endpoint id 2, ``SSPI_IFACE_WLAN``), the
one :class:`ipcgw.mptcp.policy.RssiPolicy` flips. Framing: ``read:256`` (each
read of up to 256 bytes is one message, as the plugin reads them). No
handshake, no replies.
"""

from __future__ import annotations

import enum
import struct

from ipcgw.errors import CodecError, DecodeError
from ipcgw.messages import Bye, Command, Message, Report

__all__ = ["MESSAGE_SIZE", "WLAN_PATH", "Sspi2Command", "decode", "encode"]

MESSAGE_SIZE = 256
TYPE_CMD, TYPE_DATA = 0x01, 0x02
#: Endpoint id of the 802.11 path in the plugin (SSPI_IFACE_WLAN); LTE is 1.
WLAN_PATH = 2
_CMD = struct.Struct("=BBxxxi")  # type, cmd, padding, cmd_value: the first 9 bytes
_DATA = struct.Struct("=Bi")  # type, rssi: the first 5 bytes
_INT32 = range(-(2**31), 2**31)


class Sspi2Command(enum.IntEnum):
    UNDEFINED = 0
    TCPDUMP = 1
    DEL = 2
    BACKUP_FLAG_ON = 3
    CLEAR_FLAGS = 4
    STOP_RV_MSG = 5
    IPERF_START = 6


def decode(data: bytes | bytearray | memoryview) -> Message:
    """One message as the plugin reads it (1..256 bytes) -> gateway message."""
    size = len(data)
    if not 1 <= size <= MESSAGE_SIZE:
        raise DecodeError(f"sspi2 message is 1 to {MESSAGE_SIZE} bytes, got {size}")
    kind = data[0]
    if kind == TYPE_CMD:
        head = bytes(data[:_CMD.size]).ljust(_CMD.size, b"\0")  # a short write: the rest is zero
        _, cmd, value = _CMD.unpack(head)
        return _command(cmd, value)
    if kind == TYPE_DATA:
        _, rssi = _DATA.unpack(bytes(data[:_DATA.size]).ljust(_DATA.size, b"\0"))
        return Report(0.0, WLAN_PATH, {"rssi_dbm": rssi})
    raise DecodeError(f"unknown sspi2 message type 0x{kind:02x} (0x01 command, 0x02 data)")


def _command(cmd: int, value: int) -> Message:
    if cmd == Sspi2Command.DEL:
        return Command(0, "endpoint.delete", {"id": value})
    if cmd == Sspi2Command.BACKUP_FLAG_ON:
        return Command(0, "endpoint.set_flags", {"id": value, "backup": True})
    if cmd == Sspi2Command.CLEAR_FLAGS:
        return Command(0, "endpoint.set_flags", {"id": value, "backup": False})
    if cmd == Sspi2Command.STOP_RV_MSG:
        return Bye("sspi2 STOP_RV_MSG")
    if cmd == Sspi2Command.TCPDUMP:
        return Command(0, "run.tcpdump", {"value": value})
    if cmd == Sspi2Command.IPERF_START:
        return Command(0, "run.iperf", {"value": value})
    name = "UNDEFINED" if cmd == 0 else "unknown"
    raise DecodeError(f"sspi2 command {cmd} ({name}, value {value}); known: 1-6")


def encode(msg: Message) -> bytes:
    """Message -> the 256 bytes the plugin's ns-3 program writes; CodecError otherwise."""
    if isinstance(msg, Report) and set(msg.metrics) == {"rssi_dbm"}:
        return _pad(_DATA.pack(TYPE_DATA, _int32(round(msg.metrics["rssi_dbm"]))))
    cmd, value = _record(msg)
    return _pad(_CMD.pack(TYPE_CMD, cmd, _int32(value)))


def _pad(head: bytes) -> bytes:
    return head.ljust(MESSAGE_SIZE, b"\0")


def _int32(value: int) -> int:
    if value not in _INT32:
        raise CodecError(f"sspi2 value {value} does not fit in int32")
    return value


def _record(msg: Message) -> tuple[int, int]:
    if isinstance(msg, Bye):
        return Sspi2Command.STOP_RV_MSG, 0
    if isinstance(msg, Command):
        args = msg.args
        if msg.op == "endpoint.delete":
            return Sspi2Command.DEL, int(args["id"])
        if msg.op == "endpoint.set_flags" and "id" in args:
            return (Sspi2Command.BACKUP_FLAG_ON if args.get("backup") else Sspi2Command.CLEAR_FLAGS,
                    int(args["id"]))
        if msg.op == "run.tcpdump":
            return Sspi2Command.TCPDUMP, int(args.get("value", 0))
        if msg.op == "run.iperf":
            return Sspi2Command.IPERF_START, int(args.get("value", 0))
    what = f"Command {msg.op!r}" if isinstance(msg, Command) else type(msg).__name__
    raise CodecError(f"the sspi2 protocol cannot express a {what} (it carries its commands and "
                     "RSSI reports only, one way)")
