"""Path setups a cell runs on: the veth testbed or the NS-3 data plane.

Both give the same surface to the runner — namespaces, addresses, per-path
packet losses, a sim-time → ``CLOCK_MONOTONIC`` mapping for the reaction
time, and ``check()`` raising when the setup itself failed (an ns-3
real-time miss) — so a matrix can hold both and record which one ran.

* ``veth``: :class:`ipcgw.testbed.Testbed` scenario 1 (client ``subflow``
  endpoint id 2 on path 2). Rate by ``tc tbf``, loss by nft (its counters
  are the losses). No delay: this kernel has no netem. ``mobility`` emulates
  the WiFi path of a station walking away: the RSSI of ns-3's default
  propagation model at the station's distance maps to a loss ratio on that
  path, updated every ``step_s`` in its own nft table with a *named*
  counter, so replacing the rule keeps the count.
* ``ns3``: :class:`ns3_side.lab.dataplane.DataPlane` (imported only here) with
  point-to-point / LTE-like / WiFi paths; losses are counted in the
  simulation where they happen, per cause (``loss_causes``: queue, error
  model, WiFi MAC retry limit, WiFi PHY drop reasons; ``ns3_side.lab.simproc``).
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ipcgw.testbed import NFT_TABLE, PathSpec, Testbed

from .agent import rssi_at
from .config import SetupSpec

if TYPE_CHECKING:
    from ns3_side.lab.dataplane import DataPlane

__all__ = ["Ns3Setup", "PathSetup", "Station", "VethMobility", "VethSetup", "make_setup",
           "wifi_path"]

log = logging.getLogger(__name__)

MOBILITY_TABLE = "ipcgwmob"


@dataclass(frozen=True)
class Station:
    """One station's namespaces: a workload and a policy server run per station. All
    stations of a setup have the same addresses (each pair has its own kernel)."""

    k: int
    client: str
    server: str
    setup: Any

    def server_addr(self, path: int) -> str:
        return str(self.setup.server_addr(path))


class PathSetup(Protocol):
    client: str
    server: str
    info: dict[str, Any]

    def server_addr(self, path: int) -> str: ...
    def stations(self) -> list[Station]: ...
    def build(self, seed: int) -> None: ...
    def start(self, gateway_url: str | None, more_urls: Sequence[str] = ()) -> None: ...
    def begin(self, start: float) -> None: ...
    def down(self) -> None: ...
    def check(self) -> None: ...
    def losses(self) -> list[int | None]: ...
    def sim_to_mono(self, sim: float) -> float | None: ...
    @property
    def reports_in_sim(self) -> bool: ...


def wifi_path(setup: SetupSpec) -> int | None:
    """1-based index of the path whose RSSI drives a policy, if there is one."""
    if setup.dataplane == "veth":
        return int(setup.mobility.get("path", 2)) if setup.mobility else None
    for i, p in enumerate(setup.paths, 1):
        kind = p.split(":", 1)[0] if isinstance(p, str) else p.get("kind")
        if kind == "wifi":
            return i
    return None


def _nft_counts(ns: str, table: str) -> dict[int, int]:
    """Packets dropped per ``eth<i>`` by rules (anonymous or named counters) of ``table``."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", table],
                          capture_output=True, text=True, timeout=10)
    out: dict[int, int] = {}
    if proc.returncode != 0:
        return out
    for m in re.finditer(r'iifname "eth(\d+)" .*?counter packets (\d+)', proc.stdout):
        out[int(m.group(1))] = out.get(int(m.group(1)), 0) + int(m.group(2))
    for m in re.finditer(r"counter drop(\d+) \{\s*packets (\d+)", proc.stdout):
        out[int(m.group(1))] = out.get(int(m.group(1)), 0) + int(m.group(2))
    return out


class VethMobility:
    """Loss on one veth path that follows a walking station's RSSI.

    ``loss_pct = clamp((loss_from_dbm - rssi) * pct_per_db, 0, max_pct)``:
    nothing while the signal is good, then a ramp — how 802.11 frame loss
    grows once rate adaptation has run out of slower rates.
    """

    def __init__(self, namespaces: tuple[str, str], path: int, start_m: float = 30.0,
                 speed_mps: float = 5.0, loss_from_dbm: float = -78.0, pct_per_db: float = 4.0,
                 max_pct: float = 60.0, step_s: float = 0.25, tx_power_dbm: float = 16.0,
                 **_: Any) -> None:
        self.namespaces = namespaces
        self.path = path
        self.start_m, self.speed_mps = start_m, speed_mps
        self.loss_from_dbm, self.pct_per_db, self.max_pct = loss_from_dbm, pct_per_db, max_pct
        self.step_s = step_s
        self.tx_power_dbm = tx_power_dbm
        self.start = 0.0
        self.trace: list[tuple[float, float, float]] = []  # sim t, rssi, loss %
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied: int | None = None

    def loss_pct(self, t: float) -> float:
        rssi = rssi_at(t, self.start_m, self.speed_mps, self.tx_power_dbm)
        return min(self.max_pct, max(0.0, (self.loss_from_dbm - rssi) * self.pct_per_db))

    def _apply(self, per_million: int) -> None:
        dev = f"eth{self.path}"
        rule = (f'iifname "{dev}" numgen random mod 1000000 < {per_million} '
                f'counter name "drop{self.path}" drop' if per_million else "")
        script = (f"table inet {MOBILITY_TABLE} {{\n  counter drop{self.path} {{ }}\n"
                  f"  chain in {{ type filter hook prerouting priority 1; policy accept; }}\n}}\n"
                  f"flush chain inet {MOBILITY_TABLE} in\n")
        if rule:
            script += f"add rule inet {MOBILITY_TABLE} in {rule}\n"
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                           capture_output=True, text=True, timeout=10, check=True)
        self._applied = per_million

    def begin(self, start: float) -> None:
        """Sim time 0 is ``start`` (CLOCK_MONOTONIC), shared with the reporter."""
        self.start = start
        self._apply(round(self.loss_pct(0.0) * 10_000))
        self._thread = threading.Thread(target=self._run, name="veth-mobility", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            t = time.monotonic() - self.start
            pct = self.loss_pct(t)
            self.trace.append((round(t, 3), round(rssi_at(t, self.start_m, self.speed_mps,
                                                          self.tx_power_dbm), 2), round(pct, 2)))
            per_million = round(pct * 10_000)
            if per_million != self._applied:
                try:
                    self._apply(per_million)
                except (subprocess.SubprocessError, OSError) as exc:
                    log.warning("mobility: nft update failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class VethSetup:
    reports_in_sim = False

    def __init__(self, spec: SetupSpec, prefix: str) -> None:
        self.spec = spec
        paths = [PathSpec(rate_mbit=p.get("rate_mbit"), loss_pct=float(p.get("loss_pct", 0.0)),
                          queue_bytes=p.get("queue_bytes")) for p in spec.paths]
        self.testbed = Testbed.scenario(1, prefix=prefix, paths=paths)
        self.client, self.server = self.testbed.client, self.testbed.server
        self.mobility: VethMobility | None = None
        if spec.mobility:
            self.mobility = VethMobility((self.client, self.server), **spec.mobility)
        self.info: dict[str, Any] = {"dataplane": "veth", "paths": spec.paths,
                                     "mobility": spec.mobility}

    def server_addr(self, path: int) -> str:
        return self.testbed.server_addr(path)

    def stations(self) -> list[Station]:
        return [Station(1, self.client, self.server, self)]

    def build(self, seed: int) -> None:
        self.testbed.up()

    def start(self, gateway_url: str | None, more_urls: Sequence[str] = ()) -> None:
        """The reporter stands in for the simulation; the runner starts it."""

    def begin(self, start: float) -> None:
        if self.mobility is not None:
            self.mobility.begin(start)

    def down(self) -> None:
        if self.mobility is not None:
            self.mobility.stop()
        self.testbed.down()

    def check(self) -> None:
        """Nothing can fail behind the runner's back on veth."""

    def losses(self) -> list[int | None]:
        total = {i: 0 for i in range(1, len(self.spec.paths) + 1)}
        for ns in (self.client, self.server):
            for table in (NFT_TABLE, MOBILITY_TABLE):
                for path, n in _nft_counts(ns, table).items():
                    total[path] = total.get(path, 0) + n
        return [total[i] for i in sorted(total)]

    def sim_to_mono(self, sim: float) -> float | None:
        return self.mobility.start + sim if self.mobility is not None else None


class Ns3Setup:
    reports_in_sim = True

    def __init__(self, spec: SetupSpec, prefix: str, log_dir: Any = None) -> None:
        from ns3_side.lab.paths import PathConfig

        self.spec = spec
        self.prefix = prefix
        self.paths = [PathConfig.parse(p) if isinstance(p, str) else PathConfig(**p)
                      for p in spec.paths]
        self.log_dir = log_dir
        self.dp: DataPlane | None = None
        self.client, self.server = f"{prefix}-cli", f"{prefix}-srv"
        self._offset: float | None = None  # min over progress lines of (mono - sim)
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {"dataplane": "ns3", "paths": [p.to_json() for p in self.paths]}

    def _built(self) -> DataPlane:
        if self.dp is None:
            raise RuntimeError("Ns3Setup: build() first")
        return self.dp

    def server_addr(self, path: int) -> str:
        return self._built().server_addr(path)

    def _progress(self, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            off = now - float(msg.get("sim", 0.0))
            self._offset = off if self._offset is None else min(self._offset, off)

    def stations(self) -> list[Station]:
        """Station 1 is this setup's own namespaces; more (``stations`` in the setup) are
        the data plane's ``<prefix>s<k>-cli/-srv``, walking ``station_spacing_m`` further."""
        dp = self._built()
        return [Station(1, self.client, self.server, self), *(
            Station(k, dp.station(k).client, dp.station(k).server, self)
            for k in range(2, dp.n_stations + 1))]

    def build(self, seed: int) -> None:
        from ns3_side.lab.dataplane import DataPlane, station_copies

        more = station_copies(self.paths, self.spec.stations, self.spec.station_spacing_m)
        self.dp = DataPlane(self.paths, prefix=self.prefix, scenario=1, more_stations=more,
                            hard_limit_ms=self.spec.hard_limit_ms, progress_s=0.1,
                            on_progress=self._progress, log_dir=self.log_dir, seed=seed,
                            ns3_defaults=self.spec.ns3_defaults)
        self.dp.build()

    def start(self, gateway_url: str | None, more_urls: Sequence[str] = ()) -> None:
        """``gateway_url`` gets station 1's reports, ``more_urls[k-2]`` station k's."""
        wlan = wifi_path(self.spec)
        gateway = ({"url": gateway_url, "path_id": wlan} if gateway_url and wlan else None)
        more = [{"url": url, "path_id": wlan} for url in more_urls] if gateway else []
        self._built().start(gateway, station_gateways=more)

    def begin(self, start: float) -> None:
        """The simulation's clock started when it became ready."""

    def down(self) -> None:
        if self.dp is not None:
            self.dp.down()

    def check(self) -> None:
        if self.dp is not None:
            self.dp.check()

    def losses(self, station: int = 1) -> list[int | None]:
        """Packets each path lost for good (queue, error model, MAC gave up), both sides."""
        from ns3_side.lab.paths import lost_for_good

        causes = self.loss_causes(station)
        return [None if c is None else lost_for_good(c) for c in causes]

    def loss_causes(self, station: int = 1) -> list[dict[str, int] | None]:
        """Per path, ``{cause: n}`` summed over both sides, as the simulation counted them
        (for ``station``: the progress line's ``stations`` entry)."""
        last = self.dp.last if self.dp is not None else None
        if last and station > 1:
            per = last.get("stations") or []
            last = per[station - 1] if station <= len(per) else None
        if not last:
            return [None] * len(self.paths)
        per_path = last.get("losses") or []
        out: list[dict[str, int] | None] = []
        for i in range(len(self.paths)):
            sides = per_path[i] if i < len(per_path) else None
            if sides is None:
                out.append(None)
                continue
            total: dict[str, int] = {}
            for side in sides:
                for cause, n in side.items():
                    total[cause] = total.get(cause, 0) + int(n)
            out.append(total)
        return out

    def sim_to_mono(self, sim: float) -> float | None:
        with self._lock:
            return None if self._offset is None else self._offset + sim

    @property
    def last_progress(self) -> dict[str, Any] | None:
        return None if self.dp is None else self.dp.last


def make_setup(spec: SetupSpec, prefix: str, log_dir: Any = None) -> VethSetup | Ns3Setup:
    if spec.dataplane == "veth":
        return VethSetup(spec, prefix)
    return Ns3Setup(spec, prefix, log_dir)
