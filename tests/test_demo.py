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
