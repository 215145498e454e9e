"""ICMP echo from inside a namespace, in Python: the data plane must not need ``ping``
(iputils is not installed everywhere; CI images often lack it)."""

from __future__ import annotations

import os
import select
import socket
import struct
import time

from ipcgw.netns import socket_in_netns

__all__ = ["ping"]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(netns: str | None, src: str, dst: str, *, count: int = 5, interval: float = 0.2,
         timeout: float = 2.0, size: int = 56) -> list[float]:
    """RTTs in ms of the echoes answered (lost ones are missing), bound to ``src``."""
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    rtts: list[float] = []
    try:
        sock.bind((src, 0))
        for seq in range(count):
            payload = struct.pack("!d", time.monotonic()) + b"\0" * max(0, size - 8)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident,
                                 seq) + payload
            sent = time.monotonic()
            sock.sendto(packet, (dst, 0))
            deadline = sent + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, (addr, _) = sock.recvfrom(65535)
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
                if kind == 0 and rid == ident and rseq == seq and addr == dst:
                    rtts.append((time.monotonic() - sent) * 1000.0)
                    break
            time.sleep(max(0.0, interval - (time.monotonic() - sent)))
    finally:
        sock.close()
    return rtts
