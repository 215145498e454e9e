"""The session owns its protocol: Ping, Bye and the handshake work whatever the
handler knows; handlers see Reports and Commands only."""

from __future__ import annotations

import time
from pathlib import Path

from gateway_helpers import ServerProcess, fresh_url

import ipcgw
from ipcgw.messages import Hello, Report, Result

TESTS = str(Path(__file__).parent)


def test_a_handler_that_forgets_ping_cannot_break_ping_or_bye(tmp_path):
    server = ServerProcess([fresh_url("unix", tmp_path)], tmp_path,
                           extra=["--handler", "ns3_helpers:ForgetfulHandler"],
                           env={"PYTHONPATH": TESTS})
    try:
        with ipcgw.connect(server.url, timeout=5) as client:
            assert client.ping(b"x" * 100) == b"x" * 100
            client.send(Report(0.5, 2, {"rssi_dbm": -70.0}))
            reply = client.request(ipcgw.Command(0, "anything", {}))
            assert isinstance(reply, Result) and not reply.ok and "Command" in reply.error
            client.send(Hello())  # a second Hello is the session's business, not the handler's
            err = client.recv(timeout=5)
            assert isinstance(err, ipcgw.Error) and "unexpected Hello" in err.reason
            assert client.ping(b"after") == b"after"
        deadline = time.monotonic() + 5  # Bye ended the session at the server, not the handler
        while "said bye (client closing)" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
    finally:
        server.stop_ok()
