"""The NS-3 data plane: client and server namespaces joined through simulated paths.

::

    <prefix>-cli                 simulation process (real time)              <prefix>-srv
    eth1 10.0.1.1 ═TAP═ FdNetDevice ─relay─ path 1 (p2p/cell) ─relay─ FdNetDevice ═TAP═ eth1 10.0.1.2
    eth2 10.0.2.1 ═TAP═ FdNetDevice ─relay─ path 2 (WiFi STA→AP) ─relay─ FdNetDevice ═TAP═ eth2 10.0.2.2
    eth3 7.0.0.2  ═TAP═ FdNetDevice ─IP─ UE ~ eNB─EPC─PGW ─SGi─ host ─IP─ FdNetDevice ═TAP═ eth3 10.0.3.2

An ``lte`` path is L3 (:mod:`ns3_side.lab.lte`): the client's ``eth<i>`` has the
UE's EPC address (``7.0.0.2/8``), both TAPs are NOARP, the client's table
``100+i`` routes ``default via 7.0.0.1`` (the PGW) and the server routes
``7.0.0.0/8`` out of its ``eth<i>``.

This process (the controller) never imports ns-3. It builds the namespaces
with :class:`ipcgw.testbed.Testbed` (sysctls incl. ``rp_filter=0``, one
routing table per client source address, MPTCP limits and the scenario's
endpoints) — composing, not editing it: :class:`TapTestbed` only replaces
its veth step by TAPs and its shaping step by nothing (ns-3 shapes). The
TAPs are opened here (``/dev/net/tun``, ``IFF_TAP|IFF_NO_PI``), moved into
the namespaces, and their fds handed to ``python -m ns3_side.lab.simproc``; we
close our copies, so the TAPs live exactly as long as the simulation does.

The controller is the watchdog: it reads the simulation's progress lines,
and kills it (by pid) when ns-3 reports a fatal error (``Hard real-time
limit exceeded``, ...), when progress stops (a hang), or on :meth:`down`;
then it removes both namespaces. Failures surface as :class:`SimulationFailed`
carrying ns-3's own words.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from ipcgw.errors import IpcgwError
from ipcgw.testbed import PathSpec, Testbed, TestbedError
from ns3_side.lab.paths import LTE_GATEWAY, LTE_UE_ADDR, TAP_MTU, PathConfig

__all__ = ["DataPlane", "DataplaneError", "SimulationFailed", "TapTestbed", "open_tap",
           "remove_stale_tmp", "station_copies", "station_prefixes"]

log = logging.getLogger("ns3_side.lab.dataplane")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_NOARP = 0x80
ROOT = Path(__file__).resolve().parent.parent
# ns-3's fatal-error text (NS_FATAL_ERROR / NS_ASSERT) and C++ aborts
_FATAL = re.compile(r"NS_FATAL_ERROR|NS_ASSERT|msg=|terminate called|Aborted")


TMP_PREFIX = "ipcgw-dp-"


def remove_stale_tmp(prefix: str) -> list[str]:
    """The controller's temp folders of ``prefix`` left by a kill -9 (``ipcgw-dp-<prefix>-*``):
    only real directories (not symlinks) that this user owns are removed."""
    import shutil

    base = Path(tempfile.gettempdir())
    gone = []
    for path in base.glob(f"{TMP_PREFIX}{prefix}-*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            shutil.rmtree(path, ignore_errors=True)
            gone.append(str(path))
    return gone


def station_copies(paths: Sequence[PathConfig], n: int,
                   spacing_m: float = 5.0) -> list[list[PathConfig]]:
    """Stations 2..n for ``DataPlane(more_stations=)``: station 1's paths, each WiFi
    station starting ``spacing_m`` further out per station, so each crosses a
    threshold at its own time."""
    from dataclasses import replace

    return [[replace(p, start_m=p.start_m + spacing_m * (k - 1)) if p.kind == "wifi" else
             replace(p) for p in paths] for k in range(2, n + 1)]


def station_prefixes(prefix: str) -> list[str]:
    """The namespace prefixes of stations 2.. of ``prefix`` that exist (``<prefix>s<k>``)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = {m.group(1) for m in re.finditer(rf"^({re.escape(prefix)}s\d+)-(?:cli|srv)\b",
                                             names, re.M)}
    return sorted(found)


class DataplaneError(IpcgwError):
    """The data plane could not be built or run."""


class SimulationFailed(DataplaneError):
    """The simulation process died, reported a fatal error, fell silent or was killed."""


def open_tap(name: str) -> int:
    """A new non-persistent TAP ``name`` (gone when its last fd closes); returns the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class TapTestbed(Testbed):
    """A :class:`Testbed` whose paths are TAP pairs (for ns-3) instead of veths.

    ``tap_fds[i-1] = (client fd, server fd)`` after :meth:`up`. Paths in
    ``lte_paths`` (1-based) are L3 through the EPC: see the module docstring.
    """

    tap_fds: list[tuple[int, int]] = field(default_factory=list)
    lte_paths: tuple[int, ...] = ()

    def client_addr(self, path: int) -> str:
        """An lte path's client address is the UE's: the PGW delivers only to it."""
        return LTE_UE_ADDR if path in self.lte_paths else super().client_addr(path)

    def tap_macs(self, path: int) -> list[str]:
        """[client, server] ``eth<path>`` MAC: an lte path's relays write frames to them."""
        out = []
        for ns in (self.client, self.server):
            with IPRoute(netns=ns) as ipr:
                idx = ipr.link_lookup(ifname=self.ifname(path))[0]
                out.append(str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")))
        return out

    def up(self) -> TapTestbed:
        if self.exists():
            raise TestbedError(f"namespaces of {self.prefix!r} exist already "
                               f"(remove them: ipcgw dataplane down --prefix {self.prefix})")
        try:
            super().up()
        except BaseException:
            self.close_fds()
            raise
        return self

    def _links(self) -> None:
        tag = uuid.uuid4().hex[:6]
        with IPRoute() as root:
            for i, _ in enumerate(self.paths, 1):
                pair = []
                for side, ns, addr in (("c", self.client, self.client_addr(i)),
                                       ("s", self.server, self.server_addr(i))):
                    tmp = f"ipdp{tag}{side}{i}"
                    fd = open_tap(tmp)
                    pair.append(fd)
                    root.link("set", index=root.link_lookup(ifname=tmp)[0], net_ns_fd=ns)
                    with IPRoute(netns=ns) as ipr:
                        idx = ipr.link_lookup(ifname=tmp)[0]
                        ipr.link("set", index=idx, ifname=self.ifname(i), mtu=TAP_MTU)
                        lte = i in self.lte_paths
                        if lte:  # no neighbour to ask on an L3 path
                            ipr.link("set", index=idx, flags=IFF_NOARP, change=IFF_NOARP)
                        ipr.addr("add", index=idx, address=addr,
                                 prefixlen=8 if lte and side == "c" else 24)
                        ipr.link("set", index=idx, state="up")
                        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                self.tap_fds.append((pair[0], pair[1]))

    def next_hop(self, path: int) -> str:
        """An lte path's per-source table goes via the PGW (the server is not on its link)."""
        return LTE_GATEWAY if path in self.lte_paths else super().next_hop(path)

    def _path_routes(self, cli: IPRoute, path: int, oif: int) -> None:
        """So does the main table's route to an lte path's server subnet: a connection to
        ``server_addr(i)`` starts on path i, as on every kind."""
        if path in self.lte_paths:
            cli.route("replace", dst=f"{self.server_addr(path).rsplit('.', 1)[0]}.0/24",
                      gateway=LTE_GATEWAY, oif=oif)

    def _client_routes(self) -> None:
        """:class:`Testbed`'s, and the server reaches the UE's 7.0.0.0/8 out of the lte
        path's ``eth<i>``."""
        super()._client_routes()
        with IPRoute(netns=self.server) as srv:
            for i in self.lte_paths:
                srv.route("replace", dst="7.0.0.0/8", oif=srv.link_lookup(ifname=self.ifname(i))[0])

    def _shaping(self) -> None:
        """Rate, delay, loss and queues are the simulation's."""

    def close_fds(self) -> None:
        for pair in self.tap_fds:
            for fd in pair:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.tap_fds = []

    def down(self) -> None:
        self.close_fds()
        super().down()


ProgressFn = Callable[[dict[str, Any]], None]


class DataPlane:
    """Namespaces + TAPs + a watched real-time ns-3 process; see the module docstring.

    ``up()`` = :meth:`build` (namespaces, TAPs, routing, MPTCP endpoints) then
    :meth:`start` (the simulation; returns once it is running). Use as a
    context manager: whatever happens, :meth:`down` leaves nothing behind.
    """

    def __init__(self, paths: Sequence[PathConfig], *, prefix: str | None = None,
                 scenario: int | None = 1, client_pm: str = "kernel", server_pm: str = "kernel",
                 duration: float | None = None, hard_limit_ms: float = 500.0,
                 progress_s: float = 0.5, heartbeat_s: float = 10.0,
                 start_timeout: float = 90.0, on_progress: ProgressFn | None = None,
                 log_dir: Path | None = None, seed: int = 1,
                 more_stations: Sequence[Sequence[PathConfig]] = (),
                 ns3_defaults: dict[str, Any] | None = None) -> None:
        self.paths = list(paths)
        # {"ns3::Type::Attribute": value}: Config::SetDefault before the topology exists
        self.ns3_defaults = dict(ns3_defaults or {})
        self.prefix = prefix or f"ipdp{uuid.uuid4().hex[:6]}"
        # station 1 = paths, namespaces <prefix>-cli/-srv; station k >= 2 = more_stations[k-2],
        # namespaces <prefix>s<k>-cli/-srv: its own kernel, endpoints and server
        self.station_paths = [self.paths, *(list(p) for p in more_stations)]
        # the EPC has one UE address to give and the stations' servers share addresses
        n_lte = [sum(p.kind == "lte" for p in st) for st in self.station_paths]
        if n_lte[0] > 1 or any(n_lte[1:]):
            raise DataplaneError("at most one lte path per simulation, in station 1 "
                                 "(more stations: give them a cell path)")
        self.testbeds: list[TapTestbed] = []
        for k, st_paths in enumerate(self.station_paths, start=1):
            kw: dict[str, Any] = {"prefix": self.prefix if k == 1 else f"{self.prefix}s{k}",
                                  "paths": [PathSpec() for _ in st_paths],
                                  "client_pm": client_pm, "server_pm": server_pm,
                                  "lte_paths": tuple(i for i, p in enumerate(st_paths, 1)
                                                     if p.kind == "lte")}
            # a scenario's endpoint sits on path 2: a one-path data plane has none
            use = scenario if len(st_paths) >= 2 else None
            self.testbeds.append(TapTestbed.scenario(use, **kw) if use  # type: ignore[arg-type]
                                 else TapTestbed(**kw))
        self.testbed: TapTestbed = self.testbeds[0]
        self.duration = duration
        self.hard_limit_ms = hard_limit_ms
        self.progress_s = progress_s
        self.heartbeat_s = heartbeat_s
        self.start_timeout = start_timeout
        self.on_progress = on_progress
        self.seed = seed
        self.log_dir = log_dir
        self.progress: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []  # every report sent, as the simulation stamped it
        self.marks: list[dict[str, Any]] = []  # e.g. {"what": "model_crossing", "sim", "mono"}
        self.last: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None
        self.failure: SimulationFailed | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._ended = threading.Event()
        self._last_line = time.monotonic()
        self._stderr: list[str] = []
        self._fatal: str | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- names -----------------------------------------------------------------

    @property
    def client(self) -> str:
        return self.testbed.client

    @property
    def server(self) -> str:
        return self.testbed.server

    def client_addr(self, path: int) -> str:
        return self.testbed.client_addr(path)

    def station(self, k: int) -> TapTestbed:
        """Station ``k``'s (1-based) namespaces: ``.client``, ``.server``, ``.client_addr(i)``."""
        return self.testbeds[k - 1]

    @property
    def n_stations(self) -> int:
        return len(self.testbeds)

    def server_addr(self, path: int) -> str:
        return self.testbed.server_addr(path)

    # -- lifecycle -------------------------------------------------------------

    def up(self, gateway: dict[str, Any] | None = None, **sim: Any) -> DataPlane:
        try:
            self.build()
            self.start(gateway, **sim)
        except BaseException:
            self.down()
            raise
        return self

    def build(self) -> DataPlane:
        """Namespaces, TAPs, addresses, policy routing, sysctls, MPTCP endpoints."""
        try:
            for tb in self.testbeds:
                tb.up()
        except TestbedError as exc:
            for tb in self.testbeds:
                tb.down()
            raise DataplaneError(str(exc)) from exc
        return self

    def start(self, gateway: dict[str, Any] | None = None, *,
              stall: tuple[float, float] | None = None,
              station_gateways: Sequence[dict[str, Any] | None] = ()) -> None:
        """Start the simulation (the TAP fds move to it) and wait until it runs.

        ``gateway``: ``{"url", "path_id", "alpha"?, "tau_ms"?, "min_interval_ms"?,
        "threshold_dbm"?}`` makes it report the WiFi path's RSSI and link state to an
        ipcgw server (stamped ``host_mono``; copies in :attr:`reports`) and mark when
        the propagation model crosses ``threshold_dbm`` (:attr:`marks`); ``station_gateways``
        does the same for stations 2.. (reports and marks carry ``station``). ``stall``
        (tests): block the simulation thread ``[at, seconds]``.
        """
        if not all(tb.tap_fds for tb in self.testbeds):
            raise DataplaneError("build() first")
        if station_gateways and not gateway:
            raise DataplaneError("station_gateways need station 1's gateway too")
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{self.prefix}-")
        per = [[list(pair) for pair in tb.tap_fds] for tb in self.testbeds]
        fds = per[0]
        cfg = {"paths": [p.to_json() for p in self.paths], "fds": fds, "duration": self.duration,
               # an lte path's IP relays address the frames they write to these TAPs
               "lte_tap_macs": {str(i): self.testbed.tap_macs(i) for i in self.testbed.lte_paths},
               "hard_limit_ms": self.hard_limit_ms, "progress_s": self.progress_s,
               "gateway": gateway, "stall": stall, "seed": self.seed, "netns": self.client,
               "ns3_defaults": self.ns3_defaults,
               "stations": [{"paths": [p.to_json() for p in paths], "fds": f}
                            for paths, f in zip(self.station_paths[1:], per[1:], strict=True)],
               "station_gateways": list(station_gateways)}
        cfg_path = Path(self._tmp.name) / "sim.json"
        cfg_path.write_text(json.dumps(cfg))
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / "sim-config.json").write_text(json.dumps(cfg, indent=2))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "ns3_side.lab.simproc", str(cfg_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
            pass_fds=[fd for st in per for pair in st for fd in pair])
        for tb in self.testbeds:
            tb.close_fds()  # the simulation owns the TAPs now
        self._last_line = time.monotonic()
        for target in (self._read_stdout, self._read_stderr, self._watch):
            t = threading.Thread(target=target, daemon=True, name=f"dp-{target.__name__}")
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + self.start_timeout
        while not self._ready.wait(0.1):
            if self._ended.is_set():
                self._raise_failure("before it was ready")
            if time.monotonic() > deadline:
                self._kill(f"not ready within {self.start_timeout} s")
                self._raise_failure("before it was ready")

    def check(self) -> None:
        """Raise :class:`SimulationFailed` if the simulation has failed."""
        if self.failure is not None:
            raise self.failure

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Until the simulation ends (its ``duration``); returns its last numbers."""
        if not self._ended.wait(timeout):
            return None
        self.check()
        return self.done

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def down(self) -> None:
        """Stop the simulation (TERM, then KILL) and remove both namespaces; idempotent."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        for tb in self.testbeds:
            tb.down()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> DataPlane:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- watchdog ----------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._last_line = time.monotonic()
            try:
                msg = json.loads(raw)
            except ValueError:
                continue  # cppyy's "Failed to materialize symbols" noise
            kind = msg.pop("type", None)
            if kind == "ready":
                self._ready.set()
            elif kind == "progress":
                self.last = msg
                self.progress.append(msg)
                if self.on_progress is not None:
                    try:
                        self.on_progress(msg)
                    except Exception:
                        log.exception("progress callback failed")
            elif kind == "report":
                self.reports.append(msg)
            elif kind == "mark":
                self.marks.append(msg)
            elif kind == "done":
                self.done = msg
        self.proc.wait()
        code = self.proc.returncode
        if self.done is None and not self._stopping:
            why = self._fatal or (f"exit status {code}" if code >= 0
                                  else f"killed by signal {signal.Signals(-code).name}")
            self._fail(f"ns-3 simulation process ended: {why}")
        self._ended.set()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        sink = open(self.log_dir / "sim-stderr.log", "wb") if self.log_dir else None  # noqa: SIM115
        try:
            for raw in self.proc.stderr:
                if sink:
                    sink.write(raw)
                    sink.flush()
                line = raw.decode(errors="replace").rstrip()
                if "Failed to materialize" in line or not line:
                    continue
                self._stderr = [*self._stderr[-40:], line]
                if _FATAL.search(line) and self._fatal is None:
                    m = re.search(r'msg="([^"]*)"', line)
                    self._fatal = m.group(1) if m else line.strip()
                    # ns-3 may hang after a fatal error instead of exiting
                    threading.Timer(1.0, self._kill, [self._fatal]).start()
                elif line.startswith("ns3_side.lab.simproc:") and self._fatal is None:
                    self._fatal = line.removeprefix("ns3_side.lab.simproc:").strip()
        finally:
            if sink:
                sink.close()

    def _watch(self) -> None:
        while not self._ended.wait(0.5):
            if not self._ready.is_set() or self._stopping:
                continue
            silent = time.monotonic() - self._last_line
            if silent > self.heartbeat_s:
                self._kill(f"no progress for {silent:.0f} s (simulation hung or far behind "
                           "real time)")
                return

    def _kill(self, why: str) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            log.error("killing simulation (pid %d): %s", proc.pid, why)
            if self._fatal is None:
                self._fatal = why
            proc.kill()

    def _fail(self, text: str) -> None:
        tail = [line for line in self._stderr[-8:] if line]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        self.failure = SimulationFailed(f"{text} (namespaces {self.client}, {self.server})"
                                        f"{detail}")
        log.error("%s", self.failure)

    def _raise_failure(self, when: str) -> None:
        self._ended.wait(5)
        if self.failure is None:
            self._fail(f"ns-3 simulation process failed {when}")
        raise self.failure  # type: ignore[misc]
