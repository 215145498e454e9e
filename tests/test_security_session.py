"""Who may drive the path manager: by default only the server's own uid; others
get their Pings answered and their Commands and Reports refused, unless the
server allows them (--allow-uid/--allow-gid) or they present its token (TCP).
A real ``ipcgw serve --handler mptcp`` in a namespace, the real kernel behind,
and an unprivileged user made for the test as the other peer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LocalUser
from gateway_helpers import ServerProcess

import ipcgw
from ipcgw.framing import make_framer
from ipcgw.messages import Command, Error, Hello, Ping, Pong, Result, decode, encode

#: A stdlib-only client: sends the given frames over a unix or TCP socket and
#: prints every frame it gets back, hex-encoded, one JSON list on stdout.
RAW_CLIENT = r"""
import json, socket, struct, sys
where, frames = sys.argv[1], [bytes.fromhex(h) for h in sys.argv[2:]]
if where.startswith("/"):
    s = socket.socket(socket.AF_UNIX); s.connect(where)
else:
    host, port = where.rsplit(":", 1); s = socket.create_connection((host, int(port)))
s.settimeout(5)
got, buf = [], b""
for frame in frames:
    s.sendall(frame)
    while True:
        if len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            n = struct.unpack(">I", buf[:4])[0]; got.append(buf[4:4 + n].hex()); buf = buf[4 + n:]
            break
        chunk = s.recv(65536)
        if not chunk:
            print(json.dumps(got)); sys.exit(0)
        buf += chunk
print(json.dumps(got))
"""


def frames(*msgs: object) -> list[str]:
    framer = make_framer("length:4")
    return [framer.encode(encode(m)).hex() for m in msgs]  # type: ignore[arg-type]


def replies(out: str) -> list[object]:
    return [decode(bytes.fromhex(h)) for h in json.loads(out)]


def limits(netns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "-n", netns, "mptcp", "limits", "show"], check=True,
                         capture_output=True, text=True).stdout.split()
    return {k: int(v) for k, v in zip(out[::2], out[1::2], strict=True)}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ipcgw-sec-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    made: list[ServerProcess] = []
    yield made
    for server in made:
        server.kill()


def serve(servers: list[ServerProcess], url: str, tmp: Path, netns: str, *extra: str) -> ServerProcess:
    server = ServerProcess([url], tmp, netns=netns, extra=["--handler", "mptcp", *extra])
    servers.append(server)
    return server


def hello_limits_ping(subflows: int, token: str = "") -> list[str]:
    return frames(Hello(1, "length:4", "msgpack", "x", token),
                  Command(7, "limits.set", {"subflows": subflows}), Ping(8, b"still"))


def test_another_user_may_ping_but_not_drive_the_kernel(netns, attacker: LocalUser, shared_dir,
                                                        servers):
    sock = shared_dir / "gw.sock"
    server = serve(servers, f"unix://{sock}?mode=0666", shared_dir, netns)
    before = limits(netns)
    run = attacker.run_python(RAW_CLIENT, str(sock), *hello_limits_ping(7))
    assert run.returncode == 0, run.stderr
    _, refused, pong = replies(run.stdout)
    assert isinstance(refused, Error) and refused.request_id == 7, refused
    assert f"peer uid {attacker.uid} is not the server's" in refused.reason
    assert f"--allow-uid {attacker.uid}" in refused.reason
    assert isinstance(pong, Pong) and pong.payload == b"still"
    assert limits(netns) == before  # the kernel never saw it
    with ipcgw.connect(server.url, timeout=5) as own:  # the server's uid may
        own.command("limits.set", subflows=5)
    assert limits(netns)["subflows"] == 5
    assert server.alive()
    server.stop_ok()


def test_allow_uid_lets_that_user_drive_the_kernel(netns, attacker: LocalUser, shared_dir, servers):
    sock = shared_dir / "gw.sock"
    server = serve(servers, f"unix://{sock}?mode=0666", shared_dir, netns,
                   "--allow-uid", str(attacker.uid))
    run = attacker.run_python(RAW_CLIENT, str(sock), *hello_limits_ping(6))
    _, done, _ = replies(run.stdout)
    assert isinstance(done, Result) and done.ok, done
    assert limits(netns)["subflows"] == 6
    server.stop_ok()


def _in_netns(netns: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_tcp_peers_need_the_token(netns, tmp_path, servers):
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef0123\n")
    token_file.chmod(0o600)
    server = serve(servers, "tcp://127.0.0.1:0", tmp_path, netns, "--token-file", str(token_file))
    where = server.url.removeprefix("tcp://").split("?")[0]
    for token, ok in (("", False), ("wrong-token-of-20-ch", False), ("0123456789abcdef0123", True)):
        run = _in_netns(netns, RAW_CLIENT, where, *hello_limits_ping(4 if ok else 3, token))
        assert run.returncode == 0, run.stderr
        _, reply, pong = replies(run.stdout)
        if ok:
            assert isinstance(reply, Result) and reply.ok, reply
        else:
            assert isinstance(reply, Error), reply
            assert ("wrong token" if token else "cannot tell who the peer is") in reply.reason
        assert isinstance(pong, Pong)
    assert limits(netns)["subflows"] == 4
    # the client API reads the token from ?token_file= (the file stays out of argv and logs)
    run = _in_netns(netns, "import ipcgw, sys\n"
                    "with ipcgw.connect(sys.argv[1], timeout=5) as c: c.command('limits.set', subflows=2)",
                    f"{server.url}&token_file={token_file}")
    assert run.returncode == 0, run.stderr
    assert limits(netns)["subflows"] == 2
    server.stop_ok()


def test_a_kernel_driving_tcp_listener_beyond_loopback_needs_a_token(netns, tmp_path):
    run = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "ipcgw", "serve",
                          "--handler", "mptcp", "-l", "tcp://0.0.0.0:0"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode != 0
    assert "refusing to serve" in run.stderr and "--token-file" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef0123\n")
    token_file.chmod(0o644)
    run = subprocess.run([sys.executable, "-m", "ipcgw", "serve", "--handler", "base",
                          "-l", f"unix://{tmp_path}/x.sock", "--token-file", str(token_file)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 2
    assert "mode 0600" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_run_programs_are_capped_per_name(netns, tmp_path, servers):
    server = serve(servers, f"unix://{tmp_path}/gw.sock", tmp_path, netns, "--run", "iperf=sleep")
    with ipcgw.connect(server.url, timeout=5) as client:
        first = client.command("run.iperf", value=30)
        try:
            with pytest.raises(ipcgw.IpcgwError, match=r"iperf is already running \(1 of at most 1\)"):
                client.command("run.iperf", value=30)
        finally:
            os.kill(first["pid"], 9)
    server.stop_ok()
