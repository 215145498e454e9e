"""The server-side handler the bench runs the gateway with.

Identical to ``BaseHandler`` for Ping (the round trip under test), but it
neither logs nor inspects Reports: ``BaseHandler`` logs every Report at INFO,
which for a 1 MiB payload formats a 4 MB repr and would make the throughput
figure a measure of ``logging``, not of the gateway.
"""

from __future__ import annotations

from ipcgw.messages import Message, Ping, Pong, Report
from ipcgw.server import BaseHandler, Session

__all__ = ["BenchHandler"]


class BenchHandler(BaseHandler):
    def on_message(self, session: Session, msg: Message) -> Message | None:
        if type(msg) is Ping:
            return Pong(msg.seq, msg.payload)
        if type(msg) is Report:
            return None
        return super().on_message(session, msg)
