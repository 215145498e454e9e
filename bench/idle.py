"""What a connection costs in CPU when it is idle or lightly used: the bench's
``ipcgw serve`` server with one connected client that sends nothing (the shm
idle target) or pings at a fixed rate (``RATES``: a simulation rarely sends
at full speed; at 100 or 1,000 messages/s the cost is dominated by how a side
waits, spinning or sleeping, not by the message itself).

Why measure it: shm buys its latency by spinning instead of sleeping in a
syscall; the shm issue's third target is that a connection nobody uses stays
below 2 % of one CPU (server + client). The client is a child process
(``python -m ipcgw_bench.idle URL``) that connects, pings once, says ``connected``
and then blocks in ``Client.recv`` — the worst case, a reader waiting for
data — until its stdin closes (a thread blocked in ``read`` costs nothing).
Stdin rather than a signal: the client then leaves by the same path as an
application closing its client (Bye, unlink), and no handler runs in the window
being measured. CPU is the sum of ``/proc/PID/task/*/schedstat`` (ns of run
time per thread, ``ipcgw_bench.system.proc_cpu``), not ``/proc/PID/stat``'s 10 ms
ticks, which cannot resolve 1 % over a second; every thread of both processes
lives through the window (the connection stays open), so none takes its time away.

At a rate, the client child paces ``Client.ping`` of 64 B round trips on the
clock (``time.sleep`` to the next slot, no catching up in bursts) and reports
how many it made when asked on stdin, so the achieved rate is measured too.

The floor at a rate (``measure_wake_floor``): the same pacing child with no
connection, whose ping does nothing. Its CPU per slot is what one bare wake-up
from ``time.sleep`` costs here (~20-90 us on this VM, more the rarer it is), and
a round trip needs at least two: the client's timer and the server's wait for
data. No transport can beat it, so the report gives each rate against it.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

from .system import proc_cpu

__all__ = ["IDLE_TARGET_PCT", "RATES", "main", "measure_idle", "measure_rate",
           "measure_wake_floor", "stat_cpu"]

IDLE_TARGET_PCT = 2.0
RATES = (100, 1_000, 10_000)  # messages (round trips) per second
SETTLE = 0.3  # seconds after "connected" before the window: the handshake's spin is not idle
NO_SERVER = "-"  # the client's URL for the wake-up floor: pace, send nothing
#: Wake-ups a paced round trip needs at least: the client's timer, the server's data.
WAKES_PER_ROUND_TRIP = 2


def stat_cpu(pid: int) -> float:
    """utime + stime of a whole process in seconds (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn_client(url: str, cpu: int | None, timeout: float, rate: float = 0
                  ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "ipcgw_bench.idle", url, str(timeout), str(rate)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}))


def _wait_connected(proc: subprocess.Popen[bytes], timeout: float) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"connected":
        err = b""
        if proc.poll() is not None and proc.stderr is not None:
            err = proc.stderr.read()
        raise RuntimeError(f"idle client did not connect: {err.decode(errors='replace')[-300:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin: the child closes the client (Bye) and exits; SIGKILL after 5 s."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure_idle(url: str, server_pid: int, seconds: float, client_cpu: int | None = None
                 ) -> dict[str, Any]:
    """CPU of the server and of one silent connected client over ``seconds``, as %
    of one CPU (the target compares their sum). Raises RuntimeError if the client
    cannot connect."""
    proc = _spawn_client(url, client_cpu, seconds + 60)
    try:
        _wait_connected(proc, 20.0)
        time.sleep(SETTLE)
        t0, s0, c0 = time.monotonic(), proc_cpu(server_pid), proc_cpu(proc.pid)
        time.sleep(seconds)
        t1, s1, c1 = time.monotonic(), proc_cpu(server_pid), proc_cpu(proc.pid)
    finally:
        _stop(proc)
    window = t1 - t0
    return {
        "url": url, "seconds": round(window, 3), "client_cpu": client_cpu,
        "server_cpu_s": round(s1 - s0, 6), "client_cpu_s": round(c1 - c0, 6),
        "cpu_percent": round((s1 - s0 + c1 - c0) / window * 100, 3),
        "resolution_percent": 0.0, "source": "schedstat",
        "target_percent": IDLE_TARGET_PCT,
    }


def _count(proc: subprocess.Popen[bytes]) -> int:
    """Ask the pacing client how many round trips it has made."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"n\n")
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        raise RuntimeError(f"rate client did not answer its count (said {line[:60]!r})")
    return int(line)


def _paced_window(url: str, rate: float, seconds: float, client_cpu: int | None,
                  server_pid: int | None) -> tuple[float, int, float, float]:
    """Run the pacing child at ``rate`` for ``seconds`` after it settled: (window s,
    round trips made, server CPU s, client CPU s); server CPU 0 without a server."""
    proc = _spawn_client(url, client_cpu, seconds + 60, rate)
    try:
        _wait_connected(proc, 20.0)
        time.sleep(SETTLE)
        n0 = _count(proc)
        t0, c0 = time.monotonic(), proc_cpu(proc.pid)
        s0 = proc_cpu(server_pid) if server_pid else 0.0
        time.sleep(seconds)
        t1, c1 = time.monotonic(), proc_cpu(proc.pid)
        s1 = proc_cpu(server_pid) if server_pid else 0.0
        n1 = _count(proc)
    finally:
        _stop(proc)
    return t1 - t0, n1 - n0, s1 - s0, c1 - c0


def measure_rate(url: str, server_pid: int, rate: float, seconds: float,
                 client_cpu: int | None = None) -> dict[str, Any]:
    """CPU of the server and of one client pinging at ``rate`` round trips/s over
    ``seconds``: % of one CPU for each and their sum, and CPU us per round trip."""
    window, n, server, client = _paced_window(url, rate, seconds, client_cpu, server_pid)
    return {
        "rate": rate, "seconds": round(window, 3), "achieved": round(n / window, 1),
        "server_percent": round(server / window * 100, 2),
        "client_percent": round(client / window * 100, 2),
        "cpu_percent": round((server + client) / window * 100, 2),
        "us_per_msg": round((server + client) / n * 1e6, 1) if n else None,
        "client_cpu": client_cpu, "source": "schedstat",
    }


def measure_wake_floor(rate: float, seconds: float, cpu: int | None = None) -> dict[str, Any]:
    """CPU of the pacing child with no connection at ``rate`` slots/s: per slot one
    bare wake-up; a round trip's floor is ``WAKES_PER_ROUND_TRIP`` of them."""
    window, n, _, cpu_s = _paced_window(NO_SERVER, rate, seconds, cpu, None)
    wake = cpu_s / n if n else None
    return {
        "rate": rate, "seconds": round(window, 3), "achieved": round(n / window, 1),
        "wake_us": round(wake * 1e6, 1) if wake else None,
        "us_per_msg": round(wake * WAKES_PER_ROUND_TRIP * 1e6, 1) if wake else None,
        "cpu_percent": round(cpu_s * WAKES_PER_ROUND_TRIP / window * 100, 2),
        "client_cpu": cpu, "source": "schedstat",
    }


def _pace(client: Any, rate: float, stop: threading.Event, counter: list[int]) -> None:
    """64 B round trips on a clock of ``rate`` per second until ``stop``."""
    payload = os.urandom(64)
    interval, clock, ping = 1.0 / rate, time.perf_counter, client.ping
    slot = clock()
    while not stop.is_set():
        ping(payload)
        counter[0] += 1
        slot += interval
        delay = slot - clock()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.05:
            slot = clock()  # fell behind: go on at the rate, no burst to catch up


def main(argv: list[str]) -> int:
    """The client: connect, ping once, report; then either wait in recv (rate 0) or
    ping at the rate, until stdin closes. At a rate, each stdin line "n" is
    answered with the round trips made so far."""
    url, timeout = argv[0], float(argv[1])
    rate = float(argv[2]) if len(argv) > 2 else 0.0
    if url == NO_SERVER:
        return _paced(_Nothing(), rate)
    import ipcgw

    with ipcgw.connect(url, timeout=10.0, name="ipcgw-bench-idle") as client:
        if client.ping(b"idle") != b"idle":
            print("Pong payload differs", file=sys.stderr)
            return 1
        if rate > 0:
            return _paced(client, rate)

        def close_at_eof() -> None:
            sys.stdin.buffer.read()
            client.close()  # from another thread: recv returns

        threading.Thread(target=close_at_eof, daemon=True).start()
        print("connected", flush=True)
        with contextlib.suppress(ipcgw.IpcgwError):
            client.recv(timeout=timeout)  # blocked in recv: the worst case for idling
    return 0


class _Nothing:
    """The wake-up floor's client: its ping does nothing."""

    def ping(self, payload: bytes) -> bytes:
        return payload


def _paced(client: Any, rate: float) -> int:
    """Ping at ``rate`` until stdin closes, answering each stdin line with the count."""
    stop, counter = threading.Event(), [0]

    def answer() -> None:
        for _ in sys.stdin.buffer:
            print(counter[0], flush=True)
        stop.set()

    threading.Thread(target=answer, daemon=True).start()
    print("connected", flush=True)
    _pace(client, rate, stop, counter)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
