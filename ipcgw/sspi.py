"""The legacy mptcpd "sspi" codec: ``struct {int32 type; int32 value}``, native order.

This is what the mptcpd sspi plugin reads from ``/tmp/mptcp-ns3-fifo`` and
what existing NS-3 scenarios write. Each 8-byte record maps to a gateway
message so the server handles legacy and msgpack clients with the same code:

=================  =====  ====================================================
type               value  message
=================  =====  ====================================================
TCPDUMP        0   any    Command("run.tcpdump", {"value": v})
DEL            1   id     Command("endpoint.delete", {"id": v})
BACKUP_FLAG_ON 2   id     Command("endpoint.set_flags", {"id": v, "backup": True})
CLEAR_FLAGS    3   id     Command("endpoint.set_flags", {"id": v, "backup": False})
WIFI_SNR       4   dB     Report(metrics={"snr_db": v})
END            5   any    Bye("sspi END")
IPERF_START    6   any    Command("run.iperf", {"value": v})
=================  =====  ====================================================

The protocol has no replies and no handshake, so only these messages encode.
"""

from __future__ import annotations

import enum
import struct

from ipcgw.errors import CodecError, DecodeError
from ipcgw.messages import Bye, Command, Message, Report

__all__ = ["RECORD", "SspiType", "decode", "encode"]

RECORD = struct.Struct("=ii")
_INT32 = range(-(2**31), 2**31)


class SspiType(enum.IntEnum):
    TCPDUMP = 0
    DEL = 1
    BACKUP_FLAG_ON = 2
    CLEAR_FLAGS = 3
    WIFI_SNR = 4
    END = 5
    IPERF_START = 6


def decode(data: bytes | bytearray | memoryview) -> Message:
    """One 8-byte record -> message (extra NUL padding of fixed framing ignored)."""
    if len(data) < RECORD.size:
        raise DecodeError(f"sspi record needs {RECORD.size} bytes, got {len(data)}")
    if len(data) > RECORD.size and bytes(data[RECORD.size :]).strip(b"\0"):
        raise DecodeError(f"sspi record is {RECORD.size} bytes, got {len(data)}")
    kind, value = RECORD.unpack_from(data)
    if kind == SspiType.DEL:
        return Command(0, "endpoint.delete", {"id": value})
    if kind == SspiType.BACKUP_FLAG_ON:
        return Command(0, "endpoint.set_flags", {"id": value, "backup": True})
    if kind == SspiType.CLEAR_FLAGS:
        return Command(0, "endpoint.set_flags", {"id": value, "backup": False})
    if kind == SspiType.WIFI_SNR:
        return Report(0.0, 0, {"snr_db": value})
    if kind == SspiType.END:
        return Bye("sspi END")
    if kind == SspiType.TCPDUMP:
        return Command(0, "run.tcpdump", {"value": value})
    if kind == SspiType.IPERF_START:
        return Command(0, "run.iperf", {"value": value})
    raise DecodeError(f"unknown sspi command type {kind} (value {value})")


def encode(msg: Message) -> bytes:
    """Message -> 8-byte record; CodecError for what sspi cannot say."""
    kind, value = _record(msg)
    if value not in _INT32:
        raise CodecError(f"sspi value {value} does not fit in int32")
    return RECORD.pack(kind, value)


def _record(msg: Message) -> tuple[int, int]:
    if isinstance(msg, Bye):
        return SspiType.END, 0
    if isinstance(msg, Report) and set(msg.metrics) == {"snr_db"}:
        return SspiType.WIFI_SNR, round(msg.metrics["snr_db"])
    if isinstance(msg, Command):
        args = msg.args
        if msg.op == "endpoint.delete":
            return SspiType.DEL, int(args["id"])
        if msg.op == "endpoint.set_flags" and "id" in args:
            return (SspiType.BACKUP_FLAG_ON if args.get("backup") else SspiType.CLEAR_FLAGS,
                    int(args["id"]))
        if msg.op == "run.tcpdump":
            return SspiType.TCPDUMP, int(args.get("value", 0))
        if msg.op == "run.iperf":
            return SspiType.IPERF_START, int(args.get("value", 0))
    what = f"Command {msg.op!r}" if isinstance(msg, Command) else type(msg).__name__
    raise CodecError(f"the sspi protocol cannot express a {what} (it carries the 7 sspi "
                     "commands only, one way)")
