"""A two-namespace MPTCP testbed: client and server joined by N veth paths.

::

    <prefix>-cli                                  <prefix>-srv
    eth1 10.0.1.1/24  ───────── path 1 ─────────  eth1 10.0.1.2/24
    eth2 10.0.2.1/24  ───────── path 2 ─────────  eth2 10.0.2.2/24

Per path: an optional rate (``tc tbf`` on both ends) and an optional random
loss (an nftables ``numgen random`` drop rule on both ends' *input*: a drop
at output would be reported to the local sender, which then just retries,
not a loss TCP has to recover from). This
kernel has no netem and no ``dummy`` links; delay will come from an NS-3 data
plane. Each namespace gets MPTCP enabled, limits, a path-manager mode
(``kernel`` or ``userspace``) and its endpoints: scenario 1 is a client
``subflow`` endpoint, scenario 2 a server ``signal`` endpoint.

The client has one routing table per source address (``from 10.0.i.1 lookup
100+i``, default via the server's address on path i) so that a subflow bound
to an address really leaves through its own path, whatever its destination.

Namespaces, links, addresses, rules and routes are made with pyroute2;
``tc`` and ``nft`` run as subprocesses (argv lists, never a shell). ``up`` is
idempotent (it reconciles), undoes what it created when it fails, and ``down``
removes the namespaces, which takes every veth, qdisc and nft table with them.
Names come from a prefix, so concurrent testbeds (tests) do not collide.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ipcgw.errors import TestbedError
from ipcgw.mptcp.pm import PathManager
from ipcgw.netns import NETNS_RUN_DIR, run_in_netns

__all__ = ["EndpointSpec", "PathSpec", "Testbed", "TestbedError"]

log = logging.getLogger(__name__)

PM_MODES = ("kernel", "userspace")
NFT_TABLE = "ipcgw"


@dataclass(slots=True)
class PathSpec:
    """One veth path; ``rate_mbit``/``loss_pct`` None or 0 mean unshaped / lossless.

    ``queue_bytes`` sizes the tbf queue (default: 100 ms at the rate). Make it
    larger than what a sender can have in flight (its SO_SNDBUF) to get a
    rate-limited path that never drops.
    """

    rate_mbit: float | None = None
    loss_pct: float = 0.0
    queue_bytes: int | None = None


@dataclass(slots=True)
class EndpointSpec:
    """An MPTCP endpoint on path ``path`` (1-based) of one side."""

    path: int
    id: int
    flags: str = "subflow"


@dataclass
class Testbed:
    """The testbed; construct, then :meth:`up` / :meth:`down` / :meth:`status`."""

    __test__ = False

    prefix: str = "ipcgw"
    paths: Sequence[PathSpec] = field(default_factory=lambda: [PathSpec(), PathSpec()])
    client_pm: str = "kernel"
    server_pm: str = "kernel"
    client_endpoints: Sequence[EndpointSpec] = ()
    server_endpoints: Sequence[EndpointSpec] = ()
    subflows_limit: int = 8
    add_addr_accepted_limit: int = 8
    subnet: str = "10.0"

    def __post_init__(self) -> None:
        if not self.prefix or "/" in self.prefix or len(self.prefix) > 40:
            raise ValueError(f"bad testbed prefix {self.prefix!r}")
        for mode in (self.client_pm, self.server_pm):
            if mode not in PM_MODES:
                raise ValueError(f"path manager must be one of {PM_MODES}, got {mode!r}")
        if not 1 <= len(self.paths) <= 9:
            raise ValueError("1 to 9 paths")

    # -- names and addresses ---------------------------------------------------

    @property
    def client(self) -> str:
        return f"{self.prefix}-cli"

    @property
    def server(self) -> str:
        return f"{self.prefix}-srv"

    @staticmethod
    def ifname(path: int) -> str:
        return f"eth{path}"

    def client_addr(self, path: int) -> str:
        return f"{self.subnet}.{path}.1"

    def server_addr(self, path: int) -> str:
        return f"{self.subnet}.{path}.2"

    @classmethod
    def scenario(cls, number: int, prefix: str = "ipcgw", **kw: Any) -> Testbed:
        """Scenario 1: client ``subflow`` endpoint on path 2 (id 2).
        Scenario 2: server ``signal`` endpoint on path 2 (id 2)."""
        if number == 1:
            kw.setdefault("client_endpoints", [EndpointSpec(2, 2, "subflow")])
        elif number == 2:
            kw.setdefault("server_endpoints", [EndpointSpec(2, 2, "signal")])
        else:
            raise ValueError("scenario is 1 or 2")
        return cls(prefix=prefix, **kw)

    # -- lifecycle -------------------------------------------------------------

    def exists(self) -> bool:
        names = set(netns.listnetns())
        return self.client in names or self.server in names

    def up(self) -> Testbed:
        """Build (or reconcile) the testbed; on failure remove what this call made."""
        created = [ns for ns in (self.client, self.server) if ns not in netns.listnetns()]
        try:
            for ns in created:
                netns.create(ns)
            self._links()
            for ns in (self.client, self.server):
                self._sysctls(ns)
            self._client_routes()
            self._shaping()
            self._mptcp()
        except Exception as exc:
            for ns in created:
                _remove_netns(ns)
            if isinstance(exc, TestbedError):
                raise
            raise TestbedError(f"testbed {self.prefix} up failed: {exc}") from exc
        return self

    def down(self) -> None:
        """Remove both namespaces (and with them everything inside); idempotent."""
        for ns in (self.client, self.server):
            _remove_netns(ns)

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- steps -----------------------------------------------------------------

    def _links(self) -> None:
        with IPRoute(netns=self.client) as cli, IPRoute(netns=self.server) as srv:
            for i, _ in enumerate(self.paths, 1):
                name = self.ifname(i)
                if not cli.link_lookup(ifname=name):
                    if srv.link_lookup(ifname=name):
                        srv.link("del", index=srv.link_lookup(ifname=name)[0])
                    cli.link(
                        "add", ifname=name, kind="veth",
                        peer={"ifname": name, "net_ns_fd": self.server},
                    )
                for ipr, addr in ((cli, self.client_addr(i)), (srv, self.server_addr(i))):
                    idx = ipr.link_lookup(ifname=name)[0]
                    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
                    if addr not in have:
                        ipr.addr("add", index=idx, address=addr, prefixlen=24)
                    ipr.link("set", index=idx, state="up")
            for ipr in (cli, srv):
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _sysctls(self, ns: str) -> None:
        mode = self.client_pm if ns == self.client else self.server_pm
        values = {
            "net/mptcp/enabled": "1",
            "net/mptcp/path_manager": mode,
            # subflows of one connection arrive on another interface than
            # the one the route to their source would pick (scenario 1)
            "net/ipv4/conf/all/rp_filter": "0",
            "net/ipv4/conf/default/rp_filter": "0",
        }
        for i, _ in enumerate(self.paths, 1):
            values[f"net/ipv4/conf/{self.ifname(i)}/rp_filter"] = "0"
        run_in_netns(ns, lambda: _write_sysctls(values))

    def _client_routes(self) -> None:
        with IPRoute(netns=self.client) as cli:
            for i, _ in enumerate(self.paths, 1):
                table = 100 + i
                idx = cli.link_lookup(ifname=self.ifname(i))[0]
                try:
                    cli.rule("add", src=self.client_addr(i), src_len=32, table=table,
                             priority=1000 + i)
                except NetlinkError as exc:
                    if exc.code != 17:  # EEXIST: up() again
                        raise
                cli.route("replace", dst="0.0.0.0/0", gateway=self.next_hop(i), oif=idx,
                          table=table)
                self._path_routes(cli, i, idx)

    def next_hop(self, path: int) -> str:
        """Where path ``path``'s per-source table sends everything: the server's
        address on it (a subclass whose path is routed, not a link, says otherwise)."""
        return self.server_addr(path)

    def _path_routes(self, cli: IPRoute, path: int, oif: int) -> None:
        """More client routes for ``path`` (none on a plain link)."""

    def _shaping(self) -> None:
        rules = []
        for i, path in enumerate(self.paths, 1):
            dev = self.ifname(i)
            for ns in (self.client, self.server):
                if path.rate_mbit:
                    rate_bps = int(path.rate_mbit * 1_000_000)
                    burst = max(16 * 1024, rate_bps // 8 // 250)  # >= 4 ms of traffic
                    size = (["limit", str(path.queue_bytes)] if path.queue_bytes
                            else ["latency", "100ms"])
                    _run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
                          "rate", f"{rate_bps}bit", "burst", str(burst), *size])
                else:
                    _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            if path.loss_pct:
                if not 0 < path.loss_pct < 100:
                    raise TestbedError(f"loss_pct must be in (0, 100), got {path.loss_pct}")
                per_million = round(path.loss_pct * 10_000)
                rules.append(
                    f'iifname "{dev}" numgen random mod 1000000 < {per_million} counter drop'
                )
        for ns in (self.client, self.server):
            _nft(ns, rules)

    def _mptcp(self) -> None:
        for ns, specs, addr in (
            (self.client, self.client_endpoints, self.client_addr),
            (self.server, self.server_endpoints, self.server_addr),
        ):
            with PathManager(ns) as pm:
                pm.set_limits(self.subflows_limit, self.add_addr_accepted_limit)
                pm.flush_endpoints()
                with IPRoute(netns=ns) as ipr:
                    for ep in specs:
                        idx = ipr.link_lookup(ifname=self.ifname(ep.path))[0]
                        pm.add_endpoint(addr(ep.path), id=ep.id, flags=ep.flags, ifindex=idx)

    # -- inspection --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What exists now: per namespace its addresses, PM mode, limits, endpoints."""
        out: dict[str, Any] = {"prefix": self.prefix}
        present = set(netns.listnetns())
        for role, ns in (("client", self.client), ("server", self.server)):
            if ns not in present:
                out[role] = {"netns": ns, "exists": False}
                continue
            info: dict[str, Any] = {"netns": ns, "exists": True}
            with IPRoute(netns=ns) as ipr:
                info["addresses"] = sorted(
                    f"{a.get_attr('IFA_LABEL')} {a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                    for a in ipr.get_addr(family=2)
                    if a.get_attr("IFA_LABEL") != "lo"
                )
            info["path_manager"] = run_in_netns(
                ns, lambda: _read_sysctl("net/mptcp/path_manager")
            )
            with PathManager(ns) as pm:
                info["limits"] = pm.limits()
                info["endpoints"] = pm.endpoints()
            out[role] = info
        return out


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)


def _read_sysctl(key: str) -> str:
    with open(f"/proc/sys/{key}") as f:
        return f.read().strip()


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise TestbedError(f"{argv[0]!r} is not installed (needed for: {' '.join(argv)})")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def _nft(ns: str, rules: list[str]) -> None:
    """Replace the testbed's nft table in ``ns`` atomically (nothing when no rules)."""
    if not rules:
        if shutil.which("nft"):
            _run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE],
                 check=False)
        return
    body = "\n".join(f"    {r}" for r in rules)
    script = (
        f"table inet {NFT_TABLE}\n"
        f"delete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n  chain in {{\n"
        f"    type filter hook prerouting priority 0; policy accept;\n{body}\n  }}\n}}\n"
    )
    if shutil.which("nft") is None:
        raise TestbedError("'nft' is not installed (apt-get install nftables): needed for loss")
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script, capture_output=True, text=True, timeout=30,
    )
    if proc.returncode != 0:
        raise TestbedError(f"nft in {ns} failed: {proc.stderr.strip()}")


def _remove_netns(ns: str) -> None:
    if ns in netns.listnetns():
        try:
            netns.remove(ns)
        except OSError as exc:
            log.warning("could not remove netns %s: %s", ns, exc)
    else:
        # a stale mount point left by a crash
        path = f"{NETNS_RUN_DIR}/{ns}"
        try:
            if os.path.exists(path):
                os.unlink(path)
        except OSError:
            pass
