"""Endpoint URLs: one string picks the transport, its address, framing and codec.

    fifo:///run/ipcgw              directory owned by the server
    fifo:///tmp/mptcp-ns3-fifo?codec=sspi     legacy: the FIFO file itself
    sysv://0x1c0ffee               System V key, hex or decimal
    posixmq:///ipcgw               POSIX message queue name prefix
    tcp://127.0.0.1:7700
    unix:///run/ipcgw.sock         path socket (crosses network namespaces)
    unix:@ipcgw                    abstract socket (scoped to the network namespace)
    shm:///ipcgw                   shared-memory rings

Query: ``framing=length:4|delimited:nul|delimited:lf|fixed:N|read:N``,
``codec=msgpack|json|sspi|sspi2``, ``max_frame=BYTES``, ``mode=0600``, ``token=``/``token_file=``
(handshake secret); transports read more (``params``), declared per scheme in
:data:`SCHEME_PARAMS`, so a typo (``?framng=length:4``) is refused when the URL
is parsed, with a "did you mean". Binary msgpack cannot ride ``delimited:lf``
(its bytes contain ``\n``): text framing takes ``codec=json``, and is its
default.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, urlencode, urlsplit

from ipcgw.codecs import get_codec
from ipcgw.errors import UrlError
from ipcgw.framing import DEFAULT_MAX_FRAME, Framer, make_framer

__all__ = ["SCHEME_PARAMS", "Endpoint", "parse_url"]

_STANDARD = {"framing", "codec", "max_frame", "mode"}
#: Keys every scheme takes besides the standard ones (read by the client's handshake).
COMMON_PARAMS = frozenset({"token", "token_file"})
#: The extra query keys each transport reads from ``Endpoint.params``: a transport
#: that reads a new key declares it here. A scheme not listed is refused later,
#: by the transport registry, so its keys are not checked.
SCHEME_PARAMS: dict[str, frozenset[str]] = {
    "fifo": frozenset({"pipe_size"}),
    "sysv": frozenset(),
    "posixmq": frozenset({"maxmsg", "msgsize"}),
    "tcp": frozenset(),
    "unix": frozenset({"server_uid"}),
    "shm": frozenset({"ring", "spin_us"}),
}


@dataclass(frozen=True)
class Endpoint:
    """A parsed URL. ``address`` is the transport's part: a path, key or host:port."""

    scheme: str
    address: str
    framing: str
    codec: str = "msgpack"
    max_frame: int = DEFAULT_MAX_FRAME
    mode: int = 0o600
    params: dict[str, str] = field(default_factory=dict)

    def framer(self) -> Framer:
        return make_framer(self.framing, self.max_frame)

    @property
    def oneway(self) -> bool:
        """A legacy protocol (sspi, sspi2): one plain pipe, no handshake, no replies."""
        return get_codec(self.codec).legacy_oneway

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise UrlError(f"{self.scheme} URL needs HOST:PORT, got {self.address!r}")
        return host.strip("[]"), int(port)

    def with_address(self, address: str) -> Endpoint:
        return replace(self, address=address)

    def __str__(self) -> str:
        query: dict[str, str] = {"framing": self.framing, "codec": self.codec}
        if self.max_frame != DEFAULT_MAX_FRAME:
            query["max_frame"] = str(self.max_frame)
        if self.mode != 0o600:
            query["mode"] = f"{self.mode:04o}"
        query.update(self.params)
        if self.scheme in ("tcp", "sysv"):
            base = f"{self.scheme}://{self.address}"
        elif self.address.startswith("@"):
            base = f"{self.scheme}:{self.address}"
        else:
            base = f"{self.scheme}://{self.address}"
        return f"{base}?{urlencode(query, safe=':')}"


def parse_url(url: str) -> Endpoint:
    """Parse and validate an endpoint URL (UrlError, also a ValueError, with the reason in one line)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise UrlError(f"endpoint {url!r} has no scheme (e.g. unix:///run/ipcgw.sock)")
    address = parts.netloc + parts.path if scheme in ("tcp", "sysv") else parts.path
    if scheme not in ("tcp", "sysv") and parts.netloc:
        raise UrlError(f"{scheme} URL takes a path: {scheme}:///{parts.netloc}{parts.path}")
    if not address:
        raise UrlError(f"endpoint {url!r} has no address")
    query = _query(scheme, parts.query, url)
    codec = query.get("codec") or ("json" if query.get("framing") == "delimited:lf" else "msgpack")
    try:
        kind = get_codec(codec)
    except ValueError as exc:
        raise UrlError(str(exc)) from None
    framing = query.get("framing") or kind.default_framing
    if not kind.binary_safe_on(framing):
        raise UrlError(f"codec={codec} cannot ride framing={framing} in {url!r}: binary {codec} "
                       f"contains the delimiter byte; use codec=json with delimited:lf, or "
                       f"framing=delimited:nul for {codec}")
    try:
        max_frame = int(query.get("max_frame", DEFAULT_MAX_FRAME))
        mode = int(query.get("mode", "0600"), 8)
    except ValueError:
        raise UrlError(f"max_frame must be an integer and mode octal in {url!r}") from None
    endpoint = Endpoint(
        scheme,
        address,
        framing,
        codec,
        max_frame,
        mode,
        {k: v for k, v in query.items() if k not in _STANDARD},
    )
    try:
        endpoint.framer()  # validates the framing spec
    except ValueError as exc:
        raise UrlError(str(exc)) from None
    if scheme == "tcp":
        endpoint.host_port  # noqa: B018 - validates HOST:PORT
    elif scheme == "sysv":
        sysv_key(address)
    return endpoint


def sysv_key(address: str) -> int:
    """A System V key from the URL's address: hex (0x...) or decimal."""
    try:
        key = int(address, 0)
    except ValueError:
        raise UrlError(f"sysv URL needs a numeric key (0x.. or decimal), got {address!r}") from None
    if key == 0 or not -(2**31) <= key < 2**32:
        raise UrlError(f"sysv key must be a non-zero 32-bit number, got {address!r}")
    return key


def _query(scheme: str, text: str, url: str) -> dict[str, str]:
    """The query as a dict; ValueError for a key given twice or one the scheme does not take."""
    query: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in query:
            raise UrlError(f"URL parameter {key!r} is given twice in {url!r}")
        query[key] = value
    extra = SCHEME_PARAMS.get(scheme)
    if extra is None:
        return query
    known = _STANDARD | COMMON_PARAMS | extra
    for key in query:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UrlError(f"unknown URL parameter {key!r} for {scheme}: {hint}"
                             f"({scheme} takes {', '.join(sorted(known))})")
    return query
