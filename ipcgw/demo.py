"""``ipcgw demo``: the whole gateway on an embedded default, no root needed.

Starts one real ``ipcgw serve`` process listening on every transport, talks to
it the way an NS-3 script would (handshake, reports, commands, round trips)
plus a legacy sspi writer on a FIFO, stops it with SIGTERM and checks that no
FIFO, socket file or queue is left behind.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable

from ipcgw.client import connect
from ipcgw.errors import IpcgwError, ServerStartError
from ipcgw.messages import Command, Report, Result
from ipcgw.testing import ServerProcess
from ipcgw.transports import get_transport


def _sysv_key() -> int:
    return 0x1C0F0000 + os.getpid() % 0xFFFF


def demo_urls(workdir: str, tag: str) -> list[str]:
    urls = [
        f"fifo://{workdir}/fifo",
        f"sysv://{_sysv_key():#x}",
        f"posixmq:///ipcgw-demo-{tag}",
        "tcp://127.0.0.1:0",
        f"unix://{workdir}/gw.sock",
        f"fifo://{workdir}/mptcp-ns3-fifo?codec=sspi",
    ]
    try:
        get_transport("shm")
        urls.insert(5, f"shm:///ipcgw-demo-{tag}")
    except (ImportError, ValueError):
        pass
    return urls


def _own_ipc_names(tag: str, sysv_key: int, pids: set[int]) -> set[str]:
    """The queues and segments this demo's server made and did not remove: named with
    the demo's tag, at its SysV key, or SysV queues its processes used last. Other
    programs' objects are none of the demo's business."""
    names = {f"mq:{n}" for n in os.listdir("/dev/mqueue") if tag in n} \
        if os.path.isdir("/dev/mqueue") else set()
    names |= {f"shm:{n}" for n in os.listdir("/dev/shm") if tag in n}
    with open("/proc/sysvipc/msg") as f:
        for line in list(f)[1:]:
            cols = line.split()  # key msqid perms cbytes qnum lspid lrpid ...
            if cols and (int(cols[0]) == sysv_key or {int(cols[5]), int(cols[6])} & pids):
                names.add(f"sysv:{cols[1]}")
    return names


def run_demo(echo: Callable[[str], None] = print, rounds: int = 2000) -> None:
    workdir = tempfile.mkdtemp(prefix="ipcgw-demo-")
    tag = uuid.uuid4().hex[:6]
    wanted = demo_urls(workdir, tag)
    # The base handler (ServerProcess's default): a demo must never change the
    # host's own MPTCP endpoints.
    try:
        server = ServerProcess(wanted, log_dir=workdir, verbose=False)
    except ServerStartError as exc:
        raise IpcgwError(f"server failed to start: {exc}") from None
    try:
        echo(f"server pid {server.pid} listening on {len(server.urls)} endpoints")
        payload = os.urandom(64)
        for url in server.urls:
            if "codec=sspi" in url:
                _legacy_writer(url, echo)
                continue
            with connect(url, timeout=5, name="demo") as client:
                client.send(Report(0.1, 2, {"rssi_dbm": -71.5, "snr_db": 24.0}))
                reply = client.request(Command(0, "endpoint.show"), timeout=5)
                samples = []
                for _ in range(rounds):
                    t0 = time.perf_counter_ns()
                    client.ping(payload)
                    samples.append(time.perf_counter_ns() - t0)
                samples.sort()
                answered = "Result" if isinstance(reply, Result) else "Error (no MPTCP backend)"
                echo(f"  {url.split('?')[0]:<40} handshake ok, report sent, command answered "
                     f"with {answered}, {rounds} pings p50 {samples[len(samples) // 2] / 1000:6.1f} us")
    finally:
        rc = server.stop()
    log_text = server.log()
    shutil.rmtree(workdir)
    left = _own_ipc_names(tag, _sysv_key(), {server.pid, os.getpid()})
    echo(f"server exited {rc} after SIGTERM; OS objects left behind: {sorted(left) or 'none'}")
    seen = [line.split(" report ", 1)[1] for line in log_text.splitlines() if " report " in line]
    legacy = [line for line in log_text.splitlines() if "endpoint.set_flags" in line]
    echo(f"server log: {len(seen)} reports received, {len(legacy)} legacy sspi commands decoded")
    if rc != 0 or left:
        raise IpcgwError("demo failed: the server did not shut down cleanly")


def _legacy_writer(url: str, echo: Callable[[str], None]) -> None:
    """What an unmodified NS-3 scenario of the sspi era does: write 8-byte structs."""
    path = url.removeprefix("fifo://").split("?")[0]
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, struct.pack("=ii", 2, 2) + struct.pack("=ii", 3, 2))
    finally:
        os.close(fd)
    echo(f"  {path:<40} legacy sspi: BACKUP_FLAG_ON 2, CLEAR_FLAGS 2 written")
    time.sleep(0.2)  # let the server log them before SIGTERM
