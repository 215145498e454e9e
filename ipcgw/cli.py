"""The ``ipcgw`` command line: serve, demo, ping, send (and more from other modules)."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
from typing import Any

import click

from ipcgw import messages
from ipcgw.client import connect
from ipcgw.codecs import CODECS, get_codec
from ipcgw.errors import CodecError, IpcgwError
from ipcgw.server import DEFAULT_MAX_CLIENTS, BaseHandler, Gateway
from ipcgw.transports import TRANSPORTS, get_transport
from ipcgw.transports.base import run_dir
from ipcgw.url import Endpoint, parse_url

HANDLERS = {
    "base": "ipcgw.server:BaseHandler",
    "mptcp": "ipcgw.mptcp.handler:MptcpHandler",
    "mptcpd": "ipcgw.mptcp.mptcpd:MptcpdHandler",
}


def default_url(transport: str) -> str:
    """Where ``serve --transport X`` listens: file names in the server's private run
    directory (/run/ipcgw for root), never a fixed name in /tmp another user can take."""
    run = run_dir(create=False)
    return {
        "fifo": f"fifo://{run}/fifo",
        "sysv": "sysv://0x1c0ffee",
        "posixmq": "posixmq:///ipcgw",
        "tcp": "tcp://127.0.0.1:7700",
        "unix": f"unix://{run}/ipcgw.sock",
        "shm": "shm:///ipcgw",
    }[transport]


def load_object(spec: str) -> Any:
    """``module:Name`` -> the object (for --handler and --policy)."""
    module, sep, name = spec.partition(":")
    if not sep or not name:
        raise click.BadParameter(f"expected module:Name, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {spec}: {exc}") from None


class UrlType(click.ParamType[str, str]):
    """An endpoint URL, checked when the command line is read: a typo is a usage
    error in one line (exit 2), never a traceback from deep in a transport."""

    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            get_transport(parse_url(value).scheme)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


URL = UrlType()


class LazyGroup(click.Group):
    """A group whose heavier commands (netlink, ns-3, benchmarks) are imported
    only when run, so ``ipcgw ping`` starts fast and works without them."""

    lazy: dict[str, str] = {
        "monitor": "ipcgw.mptcp.cli:monitor",
        "testbed": "ipcgw.mptcp.cli:testbed",
        "bench": "ipcgw_bench.cli:bench_command",
        "dataplane": "ns3_side.lab.cli:dataplane",
        "experiment": "ipcgw_bench.experiments.cli:experiment",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            command: click.Command = load_object(self.lazy[cmd_name])
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """What a user can cause (no server, a refusal, no permission) ends in one
        line and exit 1, whichever command it came from."""
        try:
            return super().invoke(ctx)
        except IpcgwError as exc:
            raise click.ClickException(str(exc)) from None
        except PermissionError as exc:
            raise click.ClickException(f"{exc.strerror}: {exc.filename or ''} (needs root?)".strip()) \
                from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ipcgw")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv for debug).")
def main(verbose: int) -> None:
    """IPC gateway between an NS-3 simulation and the Linux MPTCP path manager."""
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)


def build_handler(handler: str, policy: str | None, run: tuple[str, ...], run_limit: int = 1) -> BaseHandler:
    """``auto``: the mptcp handler where this namespace's kernel path manager is usable,
    else the base handler and one warning saying why (the sspi plugin's successor must
    act on the kernel by default, and still start on a machine without MPTCP)."""
    if handler == "auto":
        from ipcgw.mptcp.handler import mptcp_available

        why = mptcp_available()
        if why is None:
            handler = "mptcp"
        elif policy or run:
            raise click.UsageError(f"--policy and --run need the mptcp handler, and it cannot run "
                                   f"here: {why}")
        else:
            logging.getLogger("ipcgw.cli").warning(
                "serving without a path manager: %s; Commands will be refused "
                "(fix that and restart, or say --handler base to silence this)", why)
            handler = "base"
    cls = load_object(HANDLERS.get(handler, handler))
    kwargs: dict[str, Any] = {}
    if policy:
        from ipcgw.mptcp.policy import build_policy

        try:
            kwargs["policy"] = build_policy(policy)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--policy") from None
    for item in run:
        name, _, command = item.partition("=")
        kwargs.setdefault("programs", {})[name] = command.split()
        kwargs["max_running"] = run_limit
    if kwargs and cls is BaseHandler:
        raise click.BadParameter("--policy and --run need a path-manager handler (--handler mptcp)")
    obj: BaseHandler = cls(**kwargs)
    return obj


@main.command()
@click.option("--transport", "-t", type=click.Choice(list(TRANSPORTS)),
              help="Listen on this transport's default address (or the one given below).")
@click.option("--path", help="fifo directory / unix socket path / posixmq or shm name.")
@click.option("--key", help="sysv key (hex or decimal).")
@click.option("--host", default="127.0.0.1", show_default=True, help="tcp host.")
@click.option("--port", type=int, default=7700, show_default=True, help="tcp port.")
@click.option("--listen", "-l", "urls", multiple=True, type=URL,
              help="Listen on URL (repeatable), e.g. 'fifo:///tmp?framing=fixed:8&codec=sspi'.")
@click.option("--framing", help="Framing for --transport (default length:4).")
@click.option("--codec", type=click.Choice(list(CODECS)), help="Codec for --transport.")
@click.option("--handler", default="auto", show_default=True,
              help="auto (mptcp where the kernel's path manager is usable, else base), base, "
                   "mptcp, mptcpd (through mptcpd's ipcgw-bridge plugin), or module:Class.")
@click.option("--policy", metavar="SPEC",
              help="Path-manager policy: module:Class[?name=value&...], e.g. "
                   "'ipcgw.mptcp.policy:RssiPolicy?threshold=-78&tau_ms=300'.")
@click.option("--run", "run", multiple=True, metavar="NAME=COMMAND",
              help="Program a legacy IPERF_START/TCPDUMP may start (iperf=..., tcpdump=...).")
@click.option("--run-limit", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many copies of each --run program may run at once; more are refused.")
@click.option("--send-timeout", type=float, default=5.0, show_default=True,
              help="Seconds a client may leave replies unread before it is dropped.")
@click.option("--frame-timeout", type=click.FloatRange(min=0.001), default=10.0, show_default=True,
              help="Seconds from a frame's first byte to its last before the client is dropped.")
@click.option("--max-clients", type=click.IntRange(min=1), default=DEFAULT_MAX_CLIENTS,
              show_default=True, help="Sessions per listener; the next client is refused.")
@click.option("--allow-uid", "allow_uids", type=int, multiple=True, metavar="UID",
              help="Let this uid drive the path manager too (default: the server's uid only).")
@click.option("--allow-gid", "allow_gids", type=int, multiple=True, metavar="GID",
              help="Let peers of this group drive the path manager.")
@click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Shared secret a client presents with ?token_file= (TCP peers).")
def serve(transport: str | None, path: str | None, key: str | None, host: str, port: int,
          urls: tuple[str, ...], framing: str | None, codec: str | None, handler: str,
          policy: str | None, run: tuple[str, ...], run_limit: int, send_timeout: float,
          frame_timeout: float,
          max_clients: int, allow_uids: tuple[int, ...], allow_gids: tuple[int, ...],
          token_file: str | None) -> None:
    """Serve clients until SIGINT/SIGTERM, then remove every OS object created.

    Who may send Commands and Reports to a handler that drives the kernel: peers
    whose uid is the server's (the OS tells on every transport but TCP), those
    allowed with --allow-uid/--allow-gid, and clients with the --token-file secret.
    """
    all_urls = list(urls)
    if transport or not all_urls:
        all_urls.insert(0, _transport_url(transport or "unix", path, key, host, port, framing, codec))
    gateway = Gateway(build_handler(handler, policy, run, run_limit), send_timeout=send_timeout,
                      frame_timeout=frame_timeout, max_clients=max_clients, allow_uids=allow_uids,
                      allow_gids=allow_gids, token=read_token(token_file) if token_file else None)
    signal.signal(signal.SIGTERM, lambda *_: gateway.stop())
    signal.signal(signal.SIGINT, lambda *_: gateway.stop())
    try:
        for url in all_urls:
            try:
                endpoint = gateway.listen(url)
            except (IpcgwError, ValueError) as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(f"listening on {endpoint}", err=False)
        sys.stdout.flush()
        gateway.serve_forever()
    finally:
        gateway.close()


def read_token(path: str) -> str:
    """A token file must be the server's own and unreadable by others: it is a password."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise click.BadParameter(f"cannot open {path}: {exc.strerror}", param_hint="--token-file") \
            from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise click.BadParameter(f"{path} must be owned by uid {os.geteuid()} and mode 0600 "
                                     f"(chmod 600 {path})", param_hint="--token-file")
        token = f.read().strip()
    if len(token) < 16:
        raise click.BadParameter(f"{path} holds {len(token)} characters; use 16 or more "
                                 "(e.g. python3 -c 'import secrets; print(secrets.token_hex())')",
                                 param_hint="--token-file")
    return token


def _transport_url(transport: str, path: str | None, key: str | None, host: str, port: int,
                   framing: str | None, codec: str | None) -> str:
    if transport == "tcp":
        base = f"tcp://{host}:{port}"
    elif transport == "sysv":
        base = f"sysv://{key}" if key else default_url("sysv")
    elif path:
        base = f"{transport}://{path}" if path.startswith("/") else f"{transport}:{path}"
    else:
        base = default_url(transport)
    query = "&".join(f"{k}={v}" for k, v in (("framing", framing), ("codec", codec)) if v)
    return f"{base}?{query}" if query else base


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered.startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            return text
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _answers(endpoint: Endpoint) -> bool:
    return get_codec(endpoint.codec).replies


@main.command()
@click.argument("url", type=URL)
@click.option("--size", type=click.IntRange(min=0), default=64, show_default=True, help="Payload bytes.")
@click.option("--count", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Round trips measured.")
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True,
              help="Round trips not measured.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def ping(url: str, size: int, count: int, warmup: int, timeout: float) -> None:
    """Measure round trips through a running server."""
    endpoint = parse_url(url)
    if not _answers(endpoint):
        raise click.UsageError(f"codec={endpoint.codec} is one-way: nothing answers a Ping there "
                               "(send records with a legacy writer, or ping the server's msgpack URL)")
    payload = os.urandom(size)
    with connect(endpoint, timeout=timeout, name="ipcgw-ping") as client:
        for _ in range(warmup):
            client.ping(payload, timeout)
        samples = []
        start = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter_ns()
            if client.ping(payload, timeout) != payload:
                raise click.ClickException("Pong payload differs from Ping payload")
            samples.append(time.perf_counter_ns() - t0)
        elapsed = time.perf_counter() - start
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] / 1000

    click.echo(f"{endpoint.scheme} {size} B x {count}: min {samples[0] / 1000:.1f} us  "
               f"p50 {pct(0.5):.1f} us  p99 {pct(0.99):.1f} us  max {samples[-1] / 1000:.1f} us  "
               f"{count / elapsed:,.0f} msgs/s")


@main.command()
@click.argument("url", type=URL)
@click.argument("op_or_path")
@click.argument("fields", nargs=-1)
@click.option("--report", is_flag=True, help="Send a Report for path OP_OR_PATH instead of a Command.")
@click.option("--sim-time", type=float, default=0.0, help="Report sim time.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def send(url: str, op_or_path: str, fields: tuple[str, ...], report: bool, sim_time: float,
         timeout: float) -> None:
    """Send one Command (OP KEY=VALUE...) or Report (--report PATH KEY=VALUE...); print the reply.

    Values are true/false, integers (decimal, or 0x-hex as `ipcgw monitor` prints
    tokens), floats, or text. Report metrics must be numbers (link_up: true/false).

    \b
    ipcgw send unix:///run/ipcgw/ipcgw.sock endpoint.set_flags id=2 backup=true
    ipcgw send unix:///run/ipcgw/ipcgw.sock pm.remove token=0xe3237b7a id=5
    ipcgw send unix:///run/ipcgw/ipcgw.sock --report 2 rssi_dbm=-85.5
    """
    values = {}
    for item in fields:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="FIELDS")
        values[name] = _parse_value(text)
    if report:
        if not op_or_path.isdigit():
            raise click.BadParameter(f"a Report needs a path id (an integer), got {op_or_path!r}",
                                     param_hint="PATH")
        msg: messages.Message = messages.Report(sim_time, int(op_or_path), values)
    else:
        msg = messages.Command(0, op_or_path, values)
    try:  # a bad value is the command line's fault: say so before connecting
        get_codec(parse_url(url).codec).encode(msg)
    except CodecError as exc:
        raise click.BadParameter(str(exc), param_hint="FIELDS") from None
    with connect(url, timeout=timeout, name="ipcgw-send") as client:
        if not client.channel.codec.replies:
            client.send(msg)
            click.echo(f"{type(msg).__name__.lower()} sent (this codec has no replies)")
        elif report:
            client.send(msg)
            client.ping(b"", timeout)  # a round trip proves the report was read
            click.echo("report sent")
        else:
            reply = client.request(msg, timeout)  # type: ignore[arg-type]
            click.echo(repr(reply))
            if not (isinstance(reply, messages.Result) and reply.ok):
                sys.exit(1)


@main.command()
@click.option("--rounds", default=2000, show_default=True, help="Round trips per transport.")
def demo(rounds: int) -> None:
    """Start a server on every transport, use it like an NS-3 script would, stop it cleanly."""
    from ipcgw.demo import run_demo

    try:
        run_demo(click.echo, rounds)
    except IpcgwError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def selfcheck() -> None:
    """Encode and decode every message type through every framing (no OS objects)."""
    from ipcgw.framing import make_framer

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
        got = [messages.decode(f) for i in range(len(stream))
               for f in decoder.feed(stream[i : i + 1])]
        if got != samples:
            raise click.ClickException(f"{spec}: round trip differs")
        click.echo(f"{spec:14} {len(samples)} messages, {len(stream)} bytes: ok")

