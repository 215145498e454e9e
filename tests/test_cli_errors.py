"""Every failure a user can cause at the command line is one line with a hint and a
non-zero exit (2: the command line is wrong, 1: the world is), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def ipcgw(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
    return subprocess.run([*drop, sys.executable, "-m", "ipcgw", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd="/")


def one_line_error(run: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, run.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.parametrize(("url", "words"), [
    ("fifio:///tmp/x", ["unknown transport 'fifio'", "did you mean 'fifo'"]),
    ("tcp://127.0.0.1", ["HOST:PORT"]),
    ("/tmp/ipcgw.sock", ["no scheme", "unix:///"]),
    ("unix:///tmp/x.sock?framing=length:3", ["length:3"]),
    ("sysv://0xnewc", ["numeric key"]),
    ("unix:///tmp/x.sock?framng=length:4", ["framng", "did you mean 'framing'"]),
    ("unix:///tmp/x.sock?framing=delimited:lf&codec=msgpack", ["codec=json"]),
])
def test_a_bad_url_is_a_usage_error(url, words):
    for cmd in (["ping", url], ["send", url, "limits.get"], ["serve", "--handler", "base", "-l", url]):
        one_line_error(ipcgw(*cmd), 2, *words)


@pytest.mark.parametrize(("args", "words"), [
    (["ping", "unix:///tmp/x.sock", "--count", "0"], ["--count", "x>=1"]),
    (["ping", "unix:///tmp/x.sock", "--size", "-1"], ["--size"]),
    (["ping", "unix:///tmp/x.sock", "--timeout", "0"], ["--timeout"]),
    (["ping", "fifo:///tmp?codec=sspi"], ["one-way"]),
    (["send", "unix:///tmp/x.sock", "--report", "2", "rssi_dbm=abc"], ["rssi_dbm", "number"]),
    (["send", "unix:///tmp/x.sock", "--report", "wlan", "rssi_dbm=-80"], ["path id"]),
    (["send", "unix:///tmp/x.sock", "limits.get", "noequals"], ["KEY=VALUE"]),
])
def test_bad_parameters_are_usage_errors(args, words):
    one_line_error(ipcgw(*args), 2, *words)


def test_no_server_is_a_runtime_error(tmp_path):
    one_line_error(ipcgw("ping", f"unix://{tmp_path}/none.sock", "--timeout", "0.5"), 1, "no server")
    one_line_error(ipcgw("send", f"unix://{tmp_path}/none.sock", "limits.get", "--timeout", "0.5"), 1,
                   "no server")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_testbed_without_root_says_what_is_needed():
    one_line_error(ipcgw("testbed", "up", as_nobody=True), 1, "needs root")


def test_a_bad_policy_argument_is_named():
    run = ipcgw("serve", "--handler", "mptcp", "-l", "unix:///tmp/ipcgw-never.sock",
                "--policy", "ipcgw.mptcp.policy:RssiPolicy?threshhold=-78")
    one_line_error(run, 2, "--policy", "threshhold", "did you mean")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_experiment_and_dataplane_without_root_say_what_is_needed():
    quick = os.path.join(os.path.dirname(__file__), "..", "bench", "experiments", "examples",
                         "quick.toml")
    one_line_error(ipcgw("experiment", "run", os.path.abspath(quick), "--out", "/tmp/never",
                         as_nobody=True), 1, "needs root")
    one_line_error(ipcgw("dataplane", "down", as_nobody=True), 1, "needs root")


def test_every_registered_transport_has_a_default_address():
    from ipcgw.cli import default_url
    from ipcgw.transports import TRANSPORTS
    from ipcgw.url import parse_url

    for scheme in TRANSPORTS:
        assert parse_url(default_url(scheme)).scheme == scheme
