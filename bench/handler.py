"""The server-side handler the bench runs the gateway with.

Identical to ``BaseHandler`` for Ping (the round trip under test), but it
neither logs nor inspects Reports: ``BaseHandler`` logs every Report at INFO,
which for a 1 MiB payload formats a 4 MB repr and would make the throughput
figure a measure of ``logging``, not of the gateway. The one-way bulk message
is ``Command(0, "bench.sink", {"payload": ...})`` (Reports carry numbers only, at
most 64 KiB): dropped here unanswered, where ``BaseHandler`` would log it.
"""

from __future__ import annotations

from ipcgw.messages import Command, Message, Ping, Pong, Report
from ipcgw.server import BaseHandler, Session

__all__ = ["SINK_OP", "BenchHandler"]

SINK_OP = "bench.sink"


class BenchHandler(BaseHandler):
    def on_message(self, session: Session, msg: Message) -> Message | None:
        if type(msg) is Ping:
            return Pong(msg.seq, msg.payload)
        if type(msg) is Report or (type(msg) is Command and msg.op == SINK_OP
                                    and not msg.request_id):
            return None
        return super().on_message(session, msg)
