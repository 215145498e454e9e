"""An experiment file (TOML) and the matrix of cells it expands to.

::

    name = "quick"
    repetitions = 2          # seeds: seed, seed+1, ...
    seed = 1
    timeout_s = 60           # per cell, setup included
    policies = ["kernel", "rssi", "mypkg.mod:MyPolicy"]
    transports = ["unix", "fifo"]   # how the simulation reports to the gateway

    [[setup]]
    name = "veth"
    dataplane = "veth"                       # or "ns3"
    paths = [{rate_mbit = 10}, {rate_mbit = 20, loss_pct = 1}]
    mobility = {path = 2, start_m = 40, speed_mps = 5}   # veth: emulated WiFi
    hold_s = 3   # with a policy: run at least this long (sim time), so the
                 # handover happens and its reaction time is measured

    [[setup]]
    name = "ns3"
    dataplane = "ns3"        # paths: PathConfig.parse strings or tables of its fields
    paths = ["cell", {kind = "wifi", start_m = 30, speed_mps = 2, mobility = "bounce",
             end_m = 50, rate_manager = "minstrel", extra = {"phy.RxNoiseFigure" = "9"}}]
    ns3_defaults = {"ns3::WifiMacQueue::MaxDelay" = "200ms"}   # Config::SetDefault
    stations = 2             # each: own namespaces, policy server and workload;
    station_spacing_m = 5    # station k walks from start_m + (k-1) x 5 m

    [[workload]]
    kind = "file"            # "iperf3", "video"
    sizes = ["64K", "1M"]

``kernel`` is the kernel path manager as configured (no gateway, so the
transport axis collapses to ``-`` for it); ``rssi`` is
``ipcgw.mptcp.policy:RssiPolicy``; anything with a colon is loaded with
:func:`ipcgw.mptcp.policy.load_policy`. A policy can also be a table
``{name, spec, args}``; ``spec`` may carry parameters
(``"rssi?threshold=-78&tau_ms=300"``) and ``args`` is a table of more. Both
are checked against the policy's signature when the file is loaded
(:func:`ipcgw.mptcp.policy.build_policy`): an unknown name or a bad value
names the parameter before any cell runs.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ipcgw.transports import TRANSPORTS as _REGISTRY

__all__ = ["Cell", "ConfigError", "Experiment", "PolicySpec", "SetupSpec", "WorkloadSpec",
           "load", "parse_size"]

ALIASES = {"rssi": "ipcgw.mptcp.policy:RssiPolicy"}
TRANSPORTS = tuple(_REGISTRY)  # every transport ipcgw has
DATAPLANES = ("veth", "ns3")
KINDS = ("file", "iperf3", "video")
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


class ConfigError(ValueError):
    """The experiment file is not valid (the message names the key)."""


def parse_size(value: str | int) -> int:
    """``"64K"`` / ``"32MB"`` / ``65536`` -> bytes (binary units, as the seed's 64 KB-32 MB)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"bad size {value!r} (e.g. 64K, 1M, 32MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def size_label(n: int) -> str:
    for unit, mult in (("M", 1 << 20), ("K", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class PolicySpec:
    name: str
    spec: str | None  # None: kernel PM defaults, no gateway
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_gateway(self) -> bool:
        return self.spec is not None


@dataclass(frozen=True)
class SetupSpec:
    name: str
    dataplane: str
    paths: list[Any]
    mobility: dict[str, Any] | None = None
    hard_limit_ms: float = 500.0
    hold_s: float = 0.0
    ns3_defaults: dict[str, str] = field(default_factory=dict)
    stations: int = 1  # ns3: stations in the one simulation, each its own namespaces
    station_spacing_m: float = 5.0  # station k's WiFi starts (k-1) x this further out


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload instance (a file kind expands to one per size)."""

    kind: str
    size: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "video":
            return f"video:{self.params.get('bitrate_mbit', 4)}M"
        return f"{self.kind}:{size_label(self.size)}"


@dataclass(frozen=True)
class Cell:
    """One run: a setup x policy x transport x workload x repetition."""

    setup: SetupSpec
    policy: PolicySpec
    transport: str
    workload: WorkloadSpec
    rep: int
    seed: int

    @property
    def key(self) -> str:
        return "|".join((self.setup.name, self.policy.name, self.transport,
                         self.workload.label, str(self.rep)))

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "setup": self.setup.name, "dataplane": self.setup.dataplane,
                "policy": self.policy.name, "transport": self.transport,
                "workload": self.workload.kind, "label": self.workload.label,
                "size": self.workload.size, "rep": self.rep, "seed": self.seed}


@dataclass
class Experiment:
    name: str
    setups: list[SetupSpec]
    policies: list[PolicySpec]
    transports: list[str]
    workloads: list[WorkloadSpec]
    repetitions: int = 3
    seed: int = 1
    timeout_s: float = 120.0
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def cells(self) -> list[Cell]:
        """Repetition-major order: a matrix cut short still has every combination
        at least once, and a drift in machine load spreads over all of them."""
        out = []
        for rep in range(self.repetitions):
            for setup in self.setups:
                for policy in self.policies:
                    for transport in (self.transports if policy.needs_gateway else ["-"]):
                        for wl in self.workloads:
                            out.append(Cell(setup, policy, transport, wl, rep, self.seed + rep))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "repetitions": self.repetitions, "seed": self.seed,
                "timeout_s": self.timeout_s, "setups": [asdict(s) for s in self.setups],
                "policies": [asdict(p) for p in self.policies], "transports": self.transports,
                "workloads": [asdict(w) for w in self.workloads]}


def _policy(item: Any) -> PolicySpec:
    if isinstance(item, str):
        if item == "kernel":
            return PolicySpec("kernel", None)
        base, sep, query = item.partition("?")
        spec = ALIASES.get(base, base) + sep + query
        if ":" not in spec:
            raise ConfigError(f"policy {item!r}: use kernel, rssi or module:Class[?name=value&...]")
        name = item if base in ALIASES else base.rpartition(":")[2] + sep + query
        policy = PolicySpec(name, spec)
    elif isinstance(item, dict) and "spec" in item:
        base, sep, query = str(item["spec"]).partition("?")
        spec = ALIASES.get(base, base) + sep + query
        unknown = sorted(set(item) - {"name", "spec", "args"})
        if unknown:
            raise ConfigError(f"policy {item.get('name', spec)!r}: unknown key(s) {unknown} "
                              "(name, spec, args)")
        policy = PolicySpec(str(item.get("name", spec)), spec, dict(item.get("args", {})))
    else:
        raise ConfigError(f"bad policy entry {item!r}")
    from ipcgw.mptcp.policy import build_policy, policy_class

    try:
        policy_class(policy.spec or "")
    except ValueError:
        return policy  # not importable here: the cell fails with the reason, the rest run
    try:  # a typo in a parameter fails here, not as a silently default cell
        build_policy(policy.spec or "", policy.args)
    except ValueError as exc:
        raise ConfigError(f"policy {policy.name!r}: {exc}") from None
    return policy


def _setup(item: dict[str, Any], i: int) -> SetupSpec:
    dp = item.get("dataplane", "veth")
    if dp not in DATAPLANES:
        raise ConfigError(f"setup {i}: dataplane must be one of {DATAPLANES}, got {dp!r}")
    paths = item.get("paths") or ([{}, {}] if dp == "veth" else ["cell", "wifi"])
    if not 1 <= len(paths) <= 9:
        raise ConfigError(f"setup {i}: 1 to 9 paths")
    if dp == "veth" and not all(isinstance(p, dict) for p in paths):
        raise ConfigError(f"setup {i}: veth paths are tables {{rate_mbit, loss_pct}}")
    mob = item.get("mobility")
    if mob is not None and dp != "veth":
        raise ConfigError(f"setup {i}: mobility is the veth emulation; ns3 paths move "
                          "themselves (wifi:start=..,speed=..,mobility=bounce|waypoints|...)")
    defaults = item.get("ns3_defaults") or {}
    from ns3_side.lab.paths import PathConfig, is_ns3_default

    if (defaults and dp != "ns3") or not isinstance(defaults, dict) or not all(
            is_ns3_default(str(k)) for k in defaults):
        raise ConfigError(f"setup {i}: ns3_defaults is a table of ns3::Type::Attribute = "
                          "value, for dataplane = \"ns3\"")
    if dp == "ns3":
        for k, p in enumerate(paths, 1):
            try:
                PathConfig.parse(p) if isinstance(p, str) else PathConfig(**p)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"setup {i} path {k}: {exc}") from None
    stations = item.get("stations", 1)
    if not isinstance(stations, int) or not 1 <= stations <= 16 or (stations > 1 and dp != "ns3"):
        raise ConfigError(f"setup {i}: stations is 1 to 16, and more than 1 only with "
                          "dataplane = \"ns3\" (one simulation, a namespace pair per station)")
    return SetupSpec(str(item.get("name", f"{dp}{i}")), dp, list(paths), mob,
                     float(item.get("hard_limit_ms", 500.0)), float(item.get("hold_s", 0.0)),
                     {str(k): str(v) for k, v in defaults.items()}, stations,
                     float(item.get("station_spacing_m", 5.0)))


def _workloads(item: dict[str, Any], i: int) -> list[WorkloadSpec]:
    kind = item.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"workload {i}: kind must be one of {KINDS}, got {kind!r}")
    params = {k: v for k, v in item.items() if k not in ("kind", "sizes", "size")}
    if kind == "video":
        for key, default in (("bitrate_mbit", 4.0), ("fps", 25.0), ("duration_s", 5.0),
                             ("startup_s", 1.0)):
            params.setdefault(key, default)
        return [WorkloadSpec("video", 0, params)]
    sizes = item.get("sizes") or ([item["size"]] if "size" in item else None)
    if not sizes:
        raise ConfigError(f"workload {i}: {kind} needs sizes")
    return [WorkloadSpec(kind, parse_size(s), params) for s in sizes]


def parse(raw: dict[str, Any], source: str = "") -> Experiment:
    known = {"name", "repetitions", "seed", "timeout_s", "policies", "transports", "setup",
             "workload"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)}")
    transports = list(raw.get("transports", ["unix"]))
    bad = [t for t in transports if t not in TRANSPORTS]
    if bad:
        raise ConfigError(f"unknown transport(s) {bad} (known: {', '.join(TRANSPORTS)})")
    setups = [_setup(s, i) for i, s in enumerate(raw.get("setup", []), 1)]
    workloads = [w for i, item in enumerate(raw.get("workload", []), 1)
                 for w in _workloads(item, i)]
    if not setups or not workloads:
        raise ConfigError("need at least one [[setup]] and one [[workload]]")
    names = [s.name for s in setups]
    if len(set(names)) != len(names):
        raise ConfigError(f"setup names must be unique: {names}")
    exp = Experiment(
        name=str(raw.get("name", Path(source).stem or "experiment")),
        setups=setups,
        policies=[_policy(p) for p in raw.get("policies", ["kernel"])],
        transports=transports,
        workloads=workloads,
        repetitions=int(raw.get("repetitions", 3)),
        seed=int(raw.get("seed", 1)),
        timeout_s=float(raw.get("timeout_s", 120.0)),
        raw=raw,
        source=source,
    )
    if exp.repetitions < 1:
        raise ConfigError("repetitions must be >= 1")
    return exp


def load(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse(raw, str(path))
