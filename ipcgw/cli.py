"""The ``ipcgw`` command line."""

from __future__ import annotations

import os

import click

from ipcgw import messages
from ipcgw.framing import make_framer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ipcgw")
def main() -> None:
    """IPC gateway between an NS-3 simulation and the Linux MPTCP path manager."""


@main.command()
def selfcheck() -> None:
    """Encode and decode every message type through every framing (no OS objects)."""
    samples = [
        messages.Hello(),
        messages.Report(1.0, 2, {"rssi_dbm": -80.0}),
        messages.Command(1, "endpoint.set_flags", {"id": 2, "backup": True}),
        messages.Ping(1, os.urandom(1000)),
    ]
    for spec in ("length:4", "delimited:nul", "fixed:1100"):
        framer = make_framer(spec)
        stream = b"".join(framer.encode(messages.encode(m)) for m in samples)
        decoder = framer.decoder()
        got = [messages.decode(f) for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
        assert got == samples, spec
        click.echo(f"{spec:14} {len(samples)} messages, {len(stream)} bytes: ok")
