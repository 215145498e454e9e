"""JSON Lines codec (#14.2): any language talks to the gateway one line per message."""

from __future__ import annotations

import base64
import json
import math
import socket

import pytest
from gateway_helpers import ServerProcess, fresh_url

from ipcgw import jsonl
from ipcgw.errors import CodecError, DecodeError
from ipcgw.framing import make_framer
from ipcgw.messages import (
    Bye,
    Command,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    Report,
    Result,
    Stats,
    Welcome,
    encode,
)

EXAMPLES = [
    Hello(1, "delimited:lf", "json", "ns3"),
    Welcome(1, 10, "ipcgw 0.1"),  # session 10 is a "\n" byte in msgpack
    Error("version mismatch", 3),
    Bye("done"),
    Ping(10, b"\x00\n\xffpayload"),
    Pong(1, b""),
    Report(12.25, 2, {"rssi_dbm": -81.5, "link_up": True, "loss": 0.01}, node_id=4),
    Command(9, "endpoint.set_flags", {"id": 2, "backup": True}),
    Result(9, False, None, "address with id 9 not found"),
    Event("SUB_ESTABLISHED", {"token": 0xDEADBEEF, "saddr4": "10.0.1.1"}, 1.5),
    Stats(3.0, [{"token": 1}], [{"rtt_us": 40000, "bytes_acked": 1 << 40}]),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_every_kind_as_one_line(msg):
    line = jsonl.encode(msg)
    assert b"\n" not in line and line.isascii()
    assert jsonl.decode(line) == msg
    assert make_framer("delimited:lf").encode(line).count(b"\n") == 1


def test_the_shape_is_readable():
    assert json.loads(jsonl.encode(Report(1.0, 2, {"rssi_dbm": -80}))) == {
        "type": "report", "sim_time": 1.0, "path_id": 2, "metrics": {"rssi_dbm": -80}, "node_id": 0}
    assert json.loads(jsonl.encode(Ping(1, b"hi")))["payload"] == "aGk="  # base64


def test_missing_fields_take_defaults_and_crlf_is_fine():
    assert jsonl.decode(b'{"type":"report","path_id":2,"metrics":{"rssi_dbm":-80}}\r') == Report(
        0.0, 2, {"rssi_dbm": -80})


@pytest.mark.parametrize(("line", "words"), [
    (b"", "empty line"),
    (b"{nope", "not valid JSON"),
    (b"[1]", "expected a JSON object"),
    (b'{"type":"teleport"}', "unknown or missing message type 'teleport'"),
    (b'{"path_id":1}', "missing message type"),
    (b'{"type":"report","pathid":2}', "Report has no field 'pathid'"),
    (b'{"type":"report","path_id":"2"}', "Report.path_id must be int"),
    (b'{"type":"report","metrics":{"rssi_dbm":"abc"}}', "metric 'rssi_dbm' must be a number"),
    (b'{"type":"ping","payload":"***"}', "not valid base64"),
    (b'{"type":"ping","payload":5}', "base64 string"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"type":"ping","seq":1,"payload":"' + b"QUFB" * 100_000 + b'","x":[1]}', "flat object"),
    (b'{"type":"report","metrics":{' + b",".join(b'"m%d":1' % i for i in range(30000)) + b"}}",
     "flat object"),
    (b'{"type":"command","args":{"a":"' + b"x" * 70_000 + b'"}}' + b" " * 200_000, "flat object"),
    (b'{"type":"hello","name":"' + b"x" * 70_000 + b'"}', "larger than a Hello may be"),
])
def test_refused_with_words(line, words):
    with pytest.raises(DecodeError, match=words):
        jsonl.decode(line)


def test_large_ping_is_accepted_flat():
    msg = Ping(1, bytes(range(256)) * 4096)
    assert jsonl.decode(jsonl.encode(msg)) == msg


def test_encode_refuses_bytes_outside_a_payload_and_bad_metrics():
    with pytest.raises(CodecError, match="codec=msgpack"):
        jsonl.encode(Command(1, "x", {"blob": b"\x00"}))
    with pytest.raises(CodecError, match="rssi_dbm"):
        jsonl.encode(Report(0.0, 1, {"rssi_dbm": "abc"}))


def test_nan_is_carried():
    assert math.isnan(jsonl.decode(jsonl.encode(Report(0.0, 1, {"snr_db": math.nan}))).metrics["snr_db"])


def test_msgpack_over_lf_is_what_broke():
    """A msgpack Welcome for session 10 holds a newline: delimited:lf cut it in two."""
    assert b"\n" in encode(Welcome(1, 10, "ipcgw"))


# ---------------------------------------------------------------- a stdlib-only client, real server


class LineClient:
    """What a C++ or shell client does: write a JSON object and a newline, read a line."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def send(self, obj: dict) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def test_stdlib_client_against_ipcgw_serve(tmp_path):
    server = ServerProcess([fresh_url("unix", tmp_path, "framing=delimited:lf&codec=json")], tmp_path)
    try:
        assert "codec=json" in server.url and "delimited%3Alf" not in server.url
        path = server.url.split("://", 1)[1].split("?", 1)[0]
        client = LineClient(path)
        try:
            client.send({"type": "hello", "version": 1, "framing": "delimited:lf", "codec": "json",
                         "name": "stdlib"})
            welcome = client.recv()
            assert welcome["type"] == "welcome" and welcome["version"] == 1
            for seq in (1, 10, 2570):  # 10 and 2570 hold 0x0a bytes in binary
                client.send({"type": "ping", "seq": seq, "payload": base64.b64encode(b"\n\0x").decode()})
                assert client.recv() == {"type": "pong", "seq": seq,
                                         "payload": base64.b64encode(b"\n\0x").decode()}
            client.send({"type": "report", "sim_time": 1.0, "path_id": 2, "metrics": {"rssi_dbm": -80}})
            client.send({"type": "command", "request_id": 7, "op": "no.such.op", "args": {}})
            reply = client.recv()
            assert reply["type"] in ("result", "error") and reply["request_id"] == 7
            client.send({"type": "report", "path_id": 2, "metrics": {"rssi_dbm": "abc"}})
            bad = client.recv()
            assert bad["type"] == "error" and "rssi_dbm" in bad["reason"]
            client.send({"type": "bye", "reason": "done"})
        finally:
            client.sock.close()
        assert "rssi_dbm': -80" in server.log() or "rssi_dbm" in server.log()
    finally:
        server.stop_ok()


#: A client in plain shell: mkfifo, printf and read. Speaks the fifo transport's
#: rendezvous (one hello line into ipcgw.req, an ACK byte back), then JSON Lines.
SHELL_CLIENT = r"""
set -eu
d=$1; h=0123456789abcdef; id="c$$-$h"
mkfifo -m 600 "$d/$id.c2s" "$d/$id.s2c"
trap 'rm -f "$d/$id.c2s" "$d/$id.s2c"' EXIT
exec 3<>"$d/$id.s2c"                      # our read end (read-write: opening cannot block)
exec 4<>"$d/$id.c2s"                      # a writer until the server has opened its end
printf 'IPCGW-FIFO 1 %s %s delimited:lf json\n' $$ $h > "$d/ipcgw.req"
ack=$(dd bs=1 count=1 <&3 2>/dev/null | od -An -tx1 | tr -d ' \n')
[ "$ack" = 06 ] || { echo "no ACK: $ack" >&2; exit 9; }
exec 5>"$d/$id.c2s" 4>&-
printf '%s\n' '{"type":"hello","version":1,"framing":"delimited:lf","codec":"json","name":"sh"}' >&5
read -r line <&3; echo "$line"
printf '%s\n' '{"type":"report","sim_time":1.5,"path_id":2,"metrics":{"rssi_dbm":-81.0}}' >&5
printf '%s\n' '{"type":"ping","seq":10,"payload":"aGk="}' >&5
read -r line <&3; echo "$line"
printf '%s\n' '{"type":"bye","reason":"done"}' >&5
"""


def test_a_shell_script_talks_json_lines_over_a_fifo(tmp_path):
    import json
    import subprocess

    server = ServerProcess([fresh_url("fifo", tmp_path, "framing=delimited:lf&codec=json")], tmp_path)
    try:
        folder = server.url.removeprefix("fifo://").split("?")[0]
        run = subprocess.run(["bash", "-c", SHELL_CLIENT, "sh", folder], capture_output=True,
                             text=True, timeout=20, check=False)
        assert run.returncode == 0, run.stderr + server.log()
        welcome, pong = (json.loads(line) for line in run.stdout.splitlines())
        assert welcome["type"] == "welcome" and welcome["server"]
        assert pong == {"type": "pong", "seq": 10, "payload": "aGk="}
        assert "report t=1.500 path=2" in server.log()
    finally:
        server.stop_ok()
