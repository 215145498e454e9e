"""What an idle shm connection costs: the bench's ``ipcgw serve`` shm server with
one connected client that sends nothing, CPU of both processes over a window.

Why measure it: shm buys its latency by spinning instead of sleeping in a
syscall; the shm issue's third target is that a connection nobody uses stays
below 2 % of one CPU (server + client). The client is a child process
(``python -m bench.idle URL``) that connects, pings once, says ``connected``
and then blocks in ``Client.recv`` — the worst case, a reader waiting for
data — until its stdin closes (a thread blocked in ``read`` costs nothing).
Stdin rather than a signal: the client then leaves by the same path as an
application closing its client (Bye, unlink), and no handler runs in the window
being measured. CPU is ``utime + stime`` from ``/proc/PID/stat`` (every thread, exited
ones included), in clock ticks: 10 ms, i.e. 0.1 % of a CPU over 10 s.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["IDLE_TARGET_PCT", "main", "measure_idle", "stat_cpu"]

IDLE_TARGET_PCT = 2.0
SETTLE = 0.3  # seconds after "connected" before the window: the handshake's spin is not idle
_ROOT = str(Path(__file__).resolve().parent.parent)


def stat_cpu(pid: int) -> float:
    """utime + stime of a whole process in seconds (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn_client(url: str, cpu: int | None, timeout: float) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "bench.idle", url, str(timeout)], env=env,
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
        t0, s0, c0 = time.monotonic(), stat_cpu(server_pid), stat_cpu(proc.pid)
        time.sleep(seconds)
        t1, s1, c1 = time.monotonic(), stat_cpu(server_pid), stat_cpu(proc.pid)
    finally:
        _stop(proc)
    window = t1 - t0
    return {
        "url": url, "seconds": round(window, 3), "client_cpu": client_cpu,
        "server_cpu_s": round(s1 - s0, 3), "client_cpu_s": round(c1 - c0, 3),
        "cpu_percent": round((s1 - s0 + c1 - c0) / window * 100, 3),
        "resolution_percent": round(100 / os.sysconf("SC_CLK_TCK") / window, 3),
        "target_percent": IDLE_TARGET_PCT,
    }


def main(argv: list[str]) -> int:
    """The idle client: connect, ping once, report, then wait in recv until stdin closes."""
    import ipcgw

    url, timeout = argv[0], float(argv[1])
    with ipcgw.connect(url, timeout=10.0, name="ipcgw-bench-idle") as client:
        if client.ping(b"idle") != b"idle":
            print("Pong payload differs", file=sys.stderr)
            return 1

        def close_at_eof() -> None:
            sys.stdin.buffer.read()
            client.close()  # from another thread: recv returns

        threading.Thread(target=close_at_eof, daemon=True).start()
        print("connected", flush=True)
        with contextlib.suppress(ipcgw.IpcgwError):
            client.recv(timeout=timeout)  # blocked in recv: the worst case for idling
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
