"""Real MPTCP traffic through the data plane, and per-path numbers from the kernel.

:class:`Bulk` sends client -> server over one MPTCP connection as fast as the
paths allow (sockets made inside the namespaces by a helper thread, so this
process never changes namespace). :class:`PathSampler` reads the client's
per-subflow ``tcp_info`` (``ipcgw.mptcp.metrics``) and the MPTCP endpoints
periodically: bytes acked per path (a subflow belongs to the path of its
source address), the subflows' backup flags and the endpoint flags, which is
what the handover plot shows. Counters of subflows that closed are kept, so
per-path totals never go backwards.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ipcgw.mptcp.metrics import MetricsReader
from ipcgw.mptcp.pm import PathManager
from ipcgw.netns import socket_in_netns

__all__ = ["Bulk", "PathSampler"]

IPPROTO_MPTCP = 262
TCP_CONGESTION = 13


class Bulk:
    """One MPTCP connection client -> server, sending until :meth:`stop`."""

    def __init__(self, client_ns: str, server_ns: str, server_addr: str, *, port: int = 5201,
                 congestion: str | None = "cubic", chunk: int = 65536,
                 sndbuf: int | None = None) -> None:
        self.received = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._lsock = socket_in_netns(server_ns, socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("0.0.0.0", port))
        self._lsock.listen(1)
        self._cli = socket_in_netns(client_ns, socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        if congestion:
            # a namespace allows only reno/bbr as its default; per socket any loaded one
            with contextlib.suppress(OSError):
                self._cli.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, congestion.encode())
        if sndbuf:  # bounds what is in flight: a deep queue then never overflows
            self._cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self._cli.settimeout(10)
        self._cli.connect((server_addr, port))
        self._lsock.settimeout(10)
        self._conn, _ = self._lsock.accept()
        self._cli.settimeout(None)
        self._chunk = chunk
        self._threads = [threading.Thread(target=f, daemon=True, name=f"bulk-{f.__name__}")
                         for f in (self._tx, self._rx)]
        for t in self._threads:
            t.start()

    def _tx(self) -> None:
        data = b"x" * self._chunk
        try:
            while not self._stop.is_set():
                self._cli.sendall(data)
        except OSError as exc:
            if not self._stop.is_set():
                self.error = exc

    def _rx(self) -> None:
        buf = bytearray(1 << 16)
        try:
            while (n := self._conn.recv_into(buf)) > 0:
                self.received += n
        except OSError as exc:
            if not self._stop.is_set():
                self.error = exc

    def stop(self) -> None:
        self._stop.set()
        for s in (self._cli, self._conn):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        for s in (self._cli, self._conn, self._lsock):
            s.close()

    def __enter__(self) -> Bulk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


Row = dict[str, Any]


class PathSampler:
    """Samples the client namespace every ``interval`` s in its own thread.

    ``paths`` maps a client source address to its path number. Each row:
    ``t`` (s since start), ``bytes`` {path: acked bytes so far}, ``retrans``
    {path: the kernel's retransmitted segments so far, tcpi_total_retrans}, ``mbit``
    {path: Mbit/s over the last interval}, ``subflow_backup`` {path: bool},
    ``endpoint_backup`` {endpoint id: bool}.
    """

    def __init__(self, netns: str, paths: dict[str, int], *, interval: float = 0.5,
                 on_row: Callable[[Row], None] | None = None) -> None:
        self.netns = netns
        self.paths = paths
        self.interval = interval
        self.on_row = on_row
        self.rows: list[Row] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._seen: dict[tuple[Any, ...], int] = {}
        self._retrans: dict[tuple[Any, ...], int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="path-sampler")
        self.t0 = time.monotonic()

    def start(self) -> PathSampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with MetricsReader(self.netns) as reader, PathManager(self.netns) as pm:
                prev: Row | None = None
                while not self._stop.wait(0 if prev is None else self.interval):
                    prev = self._sample(reader, pm, prev)
        except BaseException as exc:
            self.error = exc

    def _sample(self, reader: MetricsReader, pm: PathManager, prev: Row | None) -> Row:
        now = time.monotonic() - self.t0
        backup: dict[int, bool] = {}
        for sf in reader.subflows():
            path = self.paths.get(sf["saddr"])
            if path is None:
                continue
            key = (sf["saddr"], sf["sport"], sf["daddr"], sf["dport"], sf.get("token"))
            self._seen[key] = max(self._seen.get(key, 0), int(sf.get("bytes_acked") or 0))
            self._retrans[key] = max(self._retrans.get(key, 0), int(sf.get("total_retrans") or 0))
            backup[path] = bool(sf.get("backup")) or backup.get(path, False)
        totals = dict.fromkeys(sorted(set(self.paths.values())), 0)
        retrans = dict(totals)
        for key, value in self._seen.items():
            totals[self.paths[key[0]]] += value
        for key, value in self._retrans.items():
            retrans[self.paths[key[0]]] += value
        mbit: dict[int, float] = {}
        if prev is not None:
            dt = max(now - prev["t"], 1e-6)
            mbit = {p: (totals[p] - prev["bytes"][p]) * 8 / dt / 1e6 for p in totals}
        endpoints = {int(ep["id"]): bool(int(ep["flags"]) & 0x4) for ep in pm.endpoints()}
        row = {"t": now, "bytes": totals, "retrans": retrans, "mbit": mbit,
               "subflow_backup": backup,
               "endpoint_backup": endpoints}
        self.rows.append(row)
        if self.on_row is not None and prev is not None:
            self.on_row(row)
        return row

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def rate_between(self, t0: float, t1: float) -> dict[int, float]:
        """Mean Mbit/s per path between the rows nearest ``t0`` and ``t1``."""
        rows = [r for r in self.rows if t0 <= r["t"] <= t1]
        if len(rows) < 2:
            return {}
        a, b = rows[0], rows[-1]
        dt = b["t"] - a["t"]
        return {p: (b["bytes"][p] - a["bytes"][p]) * 8 / dt / 1e6 for p in b["bytes"]}
