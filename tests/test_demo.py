"""The README's main command: ``ipcgw demo`` serves every transport and cleans up."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_every_transport_and_leaves_nothing(tmp_path):
    # A stray bench.py in the working directory must not shadow our packages
    # in the children the demo spawns.
    (tmp_path / "bench.py").write_text("raise SystemExit('shadowed')\n")
    result = subprocess.run([sys.executable, "-m", "ipcgw", "demo", "--rounds", "50"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for scheme in ("fifo://", "sysv://", "posixmq://", "tcp://", "unix://", "shm://"):
        assert scheme in out
    assert "OS objects left behind: none" in out
    assert "2 legacy sspi commands decoded" in out



def test_demo_ignores_other_programs_ipc_objects(tmp_path):
    """Objects that come and go beside the demo (another program's queues and
    segments) are not the demo's leftovers: it checks only its own names."""
    import posix_ipc
    import sysv_ipc

    made = tmp_path / "made.txt"
    code = ("import posix_ipc, sys, sysv_ipc, time, uuid\n"
            "t = uuid.uuid4().hex[:8]\n"
            "with open(sys.argv[1], 'w', buffering=1) as out:\n"
            "    for i in range(40):\n"
            "        posix_ipc.MessageQueue(f'/other-{t}-{i}', posix_ipc.O_CREX)\n"
            "        posix_ipc.SharedMemory(f'/other-{t}-{i}', posix_ipc.O_CREX, size=4096)\n"
            "        q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX)\n"
            "        print(f'/other-{t}-{i}', q.id, file=out)\n"
            "        time.sleep(0.1)\n")
    other = subprocess.Popen([sys.executable, "-c", code, str(made)])
    try:
        result = subprocess.run([sys.executable, "-m", "ipcgw", "demo", "--rounds", "50"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        other.wait(30)
        for line in made.read_text().splitlines():
            name, qid = line.split()
            posix_ipc.unlink_message_queue(name)
            posix_ipc.unlink_shared_memory(name)
            sysv_ipc.remove_message_queue(int(qid))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OS objects left behind: none" in result.stdout
