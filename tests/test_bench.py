"""The bench's own correctness: statistics, report files, --compare. Not the speed."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import re
import statistics
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from ipcgw_bench.cli import bench_command, parse_size
from ipcgw_bench.hist import Histogram, bucket_bounds, bucket_index
from ipcgw_bench.measure import CSV_COLUMNS, Record
from ipcgw_bench.report import compare, rows_with_ratios


def exact_percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile, the definition Histogram.percentile approximates."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p * len(ordered) / 100 - 1e-9))
    return ordered[rank - 1]


# ---------------------------------------------------------------- histogram


def test_provenance_is_one_record_with_packages_tools_and_an_honest_commit() -> None:
    """The benchmark, the handover run and the experiment matrix all write this record."""
    import subprocess
    from importlib import metadata

    from ipcgw.testing import provenance

    m = provenance(("msgpack", "no-such-package-ipcgw"), ("no-such-tool-ipcgw", "python3"))
    assert m["msgpack"] == metadata.version("msgpack") and m["no-such-package-ipcgw"] is None
    assert m["no-such-tool-ipcgw"] is None and m["python3"].startswith("Python 3")
    assert m["cores"] == os.cpu_count() and m["kernel"] == os.uname().release
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "ipcgw",
                                "ns3_side", "bench", ":(exclude)bench/results"],
                               capture_output=True, text=True).stdout.strip()
        assert m["ipcgw_commit"] == (f"{head}-dirty" if dirty else head)


def test_buckets_cover_every_value_once() -> None:
    rng = random.Random(1)
    values = [0, 1, 255, 256, 257, 511, 512, 2**40 + 12345, 2**63 - 1]
    values += [rng.randrange(1, 2**rng.randrange(1, 60)) for _ in range(5000)]
    for v in values:
        low, width = bucket_bounds(bucket_index(v))
        assert low <= v < low + width
        if v >= 256:
            assert width / low <= 1 / 128  # bucket width is at most 0.8 % of its values
    # consecutive buckets tile the number line
    for i in range(1, 3000):
        low, width = bucket_bounds(i - 1)
        assert bucket_bounds(i)[0] == low + width


def test_percentiles_of_uniform_sequence() -> None:
    h = Histogram()
    h.record_many(range(1000, 101_000))
    assert h.total == 100_000
    assert (h.min, h.max) == (1000, 100_999)
    assert h.percentile(0) == 1000 and h.percentile(100) == 100_999
    for p in (50, 90, 99, 99.9):
        want = 1000 + math.ceil(p * 1000) - 1  # rank p% of 100000, minus 1 for 0-based
        assert h.percentile(p) == pytest.approx(want, rel=0.004)


@pytest.mark.parametrize("seed", [3, 7])
def test_percentiles_of_lognormal_latencies(seed: int) -> None:
    """A latency-like distribution (µs..ms in ns) with a long tail, against exact ranks."""
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(math.log(20_000), 0.8)) for _ in range(50_000)]
    values += [int(rng.uniform(1e6, 5e6)) for _ in range(100)]  # rare multi-ms stalls
    h = Histogram()
    h.record_many(values)
    for p in (1, 10, 50, 90, 99, 99.9):
        assert h.percentile(p) == pytest.approx(exact_percentile(values, p), rel=0.005), p
    assert h.min == min(values) and h.max == max(values)
    summary = h.summary_us()
    assert list(summary) == ["min", "p50", "p90", "p99", "p999", "max"]
    assert summary["p50"] == pytest.approx(exact_percentile(values, 50) / 1000, rel=0.005)


def test_small_exact_values_and_empty() -> None:
    h = Histogram()
    assert h.percentile(50) == 0 and h.cdf() == []
    h.record_many([5, 5, 5, 9])
    assert h.percentile(50) == 5 and h.percentile(75) == 5 and h.percentile(76) == 9


def test_round_trip_merge_and_cdf() -> None:
    rng = random.Random(5)
    a, b = Histogram(), Histogram()
    a.record_many(rng.randrange(1000, 10**7) for _ in range(3000))
    b.record_many(rng.randrange(10, 10**5) for _ in range(3000))
    again = Histogram.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again.counts == a.counts and (again.min, again.max, again.total) == (a.min, a.max, 3000)
    a.merge(b)
    assert a.total == 6000 and a.min == b.min
    cdf = a.cdf()
    assert cdf[-1] == (a.max, 1.0)
    assert all(x1 < x2 and f1 < f2 for (x1, f1), (x2, f2) in itertools.pairwise(cdf))


# ---------------------------------------------------------------- ratios and compare


def _record(kind: str, transport: str, p50_ns: int, msgs: int, placement: str = "same",
            size: int = 64, framing: str = "") -> Record:
    h = Histogram()
    h.record_many([p50_ns] * 100)
    return Record(kind, transport, framing, placement, size, hist=h, rtt_count=100,
                  cpu_client_rtt=0.001, cpu_server_rtt=0.002, tp_msgs=msgs, tp_seconds=1.0,
                  cpu_client_tp=0.5, cpu_server_tp=0.25)


def test_ratios_pair_rows_of_the_same_transport_size_and_placement() -> None:
    rows = rows_with_ratios([
        _record("ipcgw", "unix", 30_000, 100_000, framing="length:4"),
        _record("raw", "unix", 10_000, 400_000),
        _record("c", "unix", 5_000, 800_000),
        _record("raw", "unix", 99_000, 1, placement="cross"),  # must not be paired
        _record("peer", "zmq-ipc", 40_000, 200_000),
    ])
    gw, raw, c, _, zmq = rows
    assert gw["p50_vs_raw"] == pytest.approx(3.0, rel=0.01)
    assert gw["tp_vs_raw"] == pytest.approx(0.25)
    assert gw["p50_vs_c"] == pytest.approx(6.0, rel=0.01)
    assert raw["p50_vs_raw"] is None and raw["tp_vs_c"] == pytest.approx(0.5)
    assert c["p50_vs_c"] is None
    assert zmq["p50_vs_raw"] == pytest.approx(4.0, rel=0.01)  # zmq-ipc rides on unix sockets
    assert gw["mb_per_s"] == pytest.approx(100_000 * 64 / 1e6)
    assert gw["cpu_client_us_per_rtt"] == pytest.approx(10.0)
    assert gw["cpu_server_us_per_msg"] == pytest.approx(2.5)
    assert set(CSV_COLUMNS) <= set(gw)


def _doc(records: list[Record]) -> dict:
    return {"machine": {"date": "d", "ipcgw_commit": "c"},
            "results": rows_with_ratios(records)}


def test_compare_reports_ratios_flags_and_unmatched_cases(tmp_path: Path) -> None:
    old = _doc([_record("ipcgw", "unix", 20_000, 100_000, framing="length:4"),
                _record("ipcgw", "fifo", 20_000, 100_000, framing="length:4"),
                _record("raw", "tcp", 10_000, 1000)])
    new = _doc([_record("ipcgw", "unix", 30_000, 100_000, framing="length:4"),
                _record("ipcgw", "fifo", 20_000, 200_000, framing="length:4"),
                _record("c", "tcp", 10_000, 1000)])
    lines = compare(old, new)
    unix = next(line for line in lines if line.startswith("ipcgw unix"))
    fifo = next(line for line in lines if line.startswith("ipcgw fifo"))
    assert "1.50x" in unix and unix.endswith("slower")
    assert "2.00x" in fifo and fifo.endswith("faster")
    assert any("only in the old run" in line and "raw tcp" in line for line in lines)
    assert any("only in the new run" in line and "c tcp" in line for line in lines)
    assert "1 cases slower and 1 faster" in lines[-1]

    paths = []
    for name, doc in (("old.json", old), ("new.json", new)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(doc))
    result = CliRunner().invoke(bench_command, ["--compare", str(paths[0]), str(paths[1])])
    assert result.exit_code == 0, result.output
    assert "ipcgw unix length:4 same 64 B" in result.output and "slower" in result.output


def test_parse_size() -> None:
    assert [parse_size(s) for s in ("64", "1K", "64KiB", "1MiB", "2m")] == [
        64, 1024, 65536, 1 << 20, 2 << 20]
    with pytest.raises(Exception, match="size like"):
        parse_size("lots")


# ---------------------------------------------------------------- a tiny real run


def test_tiny_real_run_writes_every_file(tmp_path: Path) -> None:
    """One transport, one size, one placement, tens of milliseconds: the real
    gateway, the raw-Python echo and (with a compiler) the C floor."""
    out = tmp_path / "report"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = CliRunner(env=env).invoke(bench_command, [
        "--transport", "unix", "--framing", "length:4", "--size", "64", "--placement", "same",
        "--lat-time", "0.02", "--tp-time", "0.02", "--no-peers", "--no-micro", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert {"report.md", "results.csv", "results.json"} <= {p.name for p in out.iterdir()}

    with (out / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    kinds = {r["kind"] for r in rows}
    assert {"ipcgw", "raw"} <= kinds
    for r in rows:
        assert r["note"] == "", r
        assert (r["transport"], r["placement"], r["size"]) == ("unix", "same", "64")
        assert float(r["lat_p50_us"]) > 0 and float(r["msgs_per_s"]) > 0
        assert float(r["lat_min_us"]) <= float(r["lat_p50_us"]) <= float(r["lat_max_us"])
        assert float(r["cpu_client_us_per_rtt"]) > 0 and float(r["cpu_server_us_per_msg"]) > 0
    gw = next(r for r in rows if r["kind"] == "ipcgw")
    assert gw["framing"] == "length:4" and float(gw["p50_vs_raw"]) > 0

    doc = json.loads((out / "results.json").read_text())
    for key in ("cpu_model", "cores", "kernel", "python", "date", "ipc_limits", "loadavg_start",
                "loadavg_end"):
        assert key in doc["machine"], key
    assert doc["machine"]["ipc_limits"]["kernel.msgmax"] is not None
    assert doc["config"]["placement_cpus"]["same"] == {"server": 0, "client": 0}
    assert all(r["hist"]["total"] == int(r["rtt_count"]) for r in doc["results"])

    md = (out / "report.md").read_text()
    assert "## Summary: who wins at each size" in md and "## Targets" in md and "### 64 B" in md
    assert "| same | ipcgw | unix | length:4 |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plots skipped" in md
    else:
        assert (out / "latency_cdf_64B.png").stat().st_size > 1000
    if "c" not in kinds:
        assert "C floor" in md  # skipped with a note, never silently
    # nothing left behind: no echo or server process, no queue, no temp dir of ours
    assert not [p for p in Path("/tmp").glob("ipcgw-bench-*") if p.stat().st_uid == os.getuid()
                and p.is_dir() and any(p.iterdir())]


def test_micro_bench_covers_every_framing_and_the_codecs() -> None:
    from ipcgw_bench.micro import run_micro

    rows = run_micro(0.002)
    names = {r["name"] for r in rows}
    assert {"length:4", "delimited:nul", "delimited:lf", "fixed:N"} <= names
    assert any(n.startswith("msgpack") for n in names) and any(n.startswith("sspi") for n in names)
    assert all(r["per_s"] > 0 for r in rows)


# ---------------------------------------------------------------- shm references and targets


def _our_shm_names() -> list[str]:
    """POSIX shm/semaphore names this process's bench made (``/ipcgwb-PID-…``)."""
    mine = f"ipcgwb-{os.getpid()}-"
    return [n for n in os.listdir("/dev/shm") if n.removeprefix("sem.").startswith(mine)]


def _placement() -> str:
    return "cross" if len(os.sched_getaffinity(0)) > 1 else "same"


@pytest.mark.parametrize("mode", ["pp", "tp"])
def test_raw_shm_ref_streams_payloads_larger_than_the_ring(mode: str) -> None:
    """3 MiB through 1 MiB rings: the echo gets (and in pp returns) every byte."""
    from ipcgw_bench.refs import make_ref
    from ipcgw_bench.shmring import RING

    size = 3 * RING
    payload = os.urandom(size)
    with make_ref("raw", "shm", mode, size, 0, 30.0) as ref:
        assert not _our_shm_names()  # unlinked once the echo had opened them
        for _ in range(2):
            if mode == "pp":
                ref.rtt(payload)
                assert bytes(ref._buf[:size]) == payload
            else:
                ref.send(payload)
        got = ref.finish()
    assert got == 2 * size  # bytes the echo counted
    assert ref.proc is not None and ref.proc.returncode == 0
    assert not _our_shm_names()


def test_raw_shm_ref_fails_cleanly_when_the_echo_dies() -> None:
    from ipcgw_bench.refs import make_ref

    ref = make_ref("raw", "shm", "pp", 64, 0, 30.0)
    with ref:
        ref.rtt(b"x" * 64)
        assert ref.proc is not None
        ref.proc.kill()
        with pytest.raises(EOFError):
            for _ in range(1000):  # the watchdog wakes the waiting side within a slice
                ref.rtt(b"x" * 64)
    assert not _our_shm_names()


def test_c_shm_floor_runs_and_leaves_no_names(tmp_path: Path) -> None:
    from ipcgw_bench.cfloor import CFloor

    cfloor = CFloor(tmp_path / "cache")
    if cfloor.build() and "shm" not in cfloor.binaries:
        pytest.skip(cfloor.note)
    server, client = (0, 1) if _placement() == "cross" else (0, 0)
    for mode, size in (("pp", 64), ("pp", 2 << 20), ("tp", 3 << 20)):
        run = cfloor.run("shm", mode, size, 0.02, client, server)
        assert run.n > 0 and run.elapsed > 0
        if mode == "pp":
            assert run.hist.total == run.n and run.hist.min > 0
    assert not _our_shm_names()


def test_idle_measurement_of_a_real_shm_server(tmp_path: Path) -> None:
    """A connected client that sends nothing: a small, non-negative share of a CPU."""
    from ipcgw_bench.idle import measure_idle
    from ipcgw_bench.servers import BenchServer, fresh_url

    server = BenchServer(fresh_url("shm", "length:4", str(tmp_path)), 0, None, str(tmp_path))
    try:
        result = measure_idle(server.url, server.pid, 0.5, 1 if _placement() == "cross" else 0)
        time.sleep(0.3)  # the session logs its end
        log = server.log()
    finally:
        server.stop()
    assert result["seconds"] == pytest.approx(0.5, abs=0.2)
    assert 0 <= result["cpu_percent"] < 50
    assert result["cpu_percent"] == pytest.approx(
        (result["server_cpu_s"] + result["client_cpu_s"]) / result["seconds"] * 100, abs=0.01)
    assert "ipcgw-bench-idle" in log and "said bye" in log  # it left cleanly, not killed


def test_interleaved_p50_rounds_on_real_servers(tmp_path: Path) -> None:
    """shm and unix servers, rounds in rotating order: one p50 per transport and round,
    and the ratio is the median of the per-round ratios."""
    from ipcgw_bench.interleave import interleaved_p50
    from ipcgw_bench.servers import BenchServer, fresh_url

    servers = {t: BenchServer(fresh_url(t, "length:4", str(tmp_path)), 0, None, str(tmp_path))
               for t in ("shm", "unix")}
    try:
        ab = interleaved_p50(servers, 1 if _placement() == "cross" else 0, rounds=3, slice_s=0.05)
    finally:
        for server in servers.values():
            server.stop()
    assert set(ab["p50_us"]) == {"shm", "unix"}
    assert all(len(v) == 3 and min(v) > 0 for v in ab["p50_us"].values())
    assert ab["best_per_round"] == ["unix"] * 3
    expected = sorted(u / s for u, s in zip(ab["p50_us"]["unix"], ab["p50_us"]["shm"], strict=True))
    assert ab["ratio"] == pytest.approx(expected[1], rel=0.01)
    assert not _our_shm_names()


def test_shm_p50_target_prefers_the_interleaved_rounds() -> None:
    from ipcgw_bench.report import shm_targets

    rows = rows_with_ratios([_gw("shm", 8_000, 1, 64), _gw("unix", 80_000, 1, 64)])
    ab = {"rounds": 3, "slice_s": 0.2, "size": 64, "ratio": 4.0, "ratios": [3.0, 4.0, 9.0],
          "median_p50_us": {"shm": 8.0, "unix": 32.0}}
    t = shm_targets(rows, _cfg(["shm", "unix"]), None, ab)
    assert t["p50_64B"]["ratio"] == 4.0 and t["p50_64B"]["met"] is False  # not the table's 10x
    assert t["p50_64B_sequential"]["ratio"] == pytest.approx(10.0) and t["p50_64B_sequential"]["met"]
    failed = shm_targets(rows, _cfg(["shm", "unix"]), None, {"error": "RuntimeError: x"})
    assert failed["p50_64B"]["ratio"] == pytest.approx(10.0)  # falls back to the table


def _gw(transport: str, p50_ns: int, msgs: int, size: int, note: str = "") -> Record:
    rec = _record("ipcgw", transport, p50_ns, msgs, placement="cross", size=size,
                  framing="length:4")
    rec.note = note
    return rec


def _cfg(transports: list[str]) -> dict:
    return {"framings": ["length:4"], "placements": ["cross"], "sizes": [64, 1 << 20],
            "transports": transports}


def test_shm_targets_pick_the_best_syscall_transport() -> None:
    from ipcgw_bench.report import shm_targets

    rows = rows_with_ratios([
        _gw("shm", 8_000, 1, 64), _gw("unix", 45_000, 1, 64), _gw("fifo", 30_000, 1, 64),
        _gw("tcp", 1_000, 1, 64, note="error: RuntimeError: broken"),  # failed rows don't count
        _gw("shm", 1, 5000, 1 << 20), _gw("unix", 1, 6000, 1 << 20),
    ])
    idle = {"cpu_percent": 0.4, "seconds": 10.0, "server_cpu_s": 0.01, "client_cpu_s": 0.03,
            "resolution_percent": 0.1}
    t = shm_targets(rows, _cfg(["shm", "unix", "fifo", "tcp"]), idle)
    assert t["p50_64B"]["best"] == "fifo" and t["p50_64B"]["ratio"] == pytest.approx(3.75, rel=0.01)
    assert t["p50_64B"]["met"] is False
    assert t["p50_64B"]["not_run"] == ["sysv", "posixmq", "tcp"]
    assert t["mb_per_s_1MiB"]["best"] == "unix" and t["mb_per_s_1MiB"]["met"] is False
    assert t["idle_cpu"]["met"] is True and t["idle_cpu"]["percent"] == 0.4

    only_shm = shm_targets(rows_with_ratios([_gw("shm", 8_000, 1, 64)]), _cfg(["shm"]), None)
    assert only_shm["p50_64B"]["met"] is None
    assert "no syscall transport" in only_shm["p50_64B"]["missing"]
    assert "was not in this run" in only_shm["mb_per_s_1MiB"]["missing"] or \
        "shm did not run" in only_shm["mb_per_s_1MiB"]["missing"]
    assert "not measured" in only_shm["idle_cpu"]["missing"]
    same = shm_targets(rows, {**_cfg(["shm", "unix"]), "placements": ["same"]}, idle)
    assert same["p50_64B"]["missing"] == "placement cross was not in this run"


def test_tiny_real_run_with_shm_has_its_references_and_targets(tmp_path: Path) -> None:
    """shm alone: ipcgw, raw-Python and C rows, the idle figure, and a targets section
    that says the syscall ratios could not be taken instead of inventing them."""
    out = tmp_path / "report"
    placement = _placement()
    result = CliRunner(env={"XDG_CACHE_HOME": str(tmp_path / "cache")}).invoke(bench_command, [
        "--transport", "shm", "--framing", "length:4", "--size", "64", "--placement", placement,
        "--lat-time", "0.02", "--tp-time", "0.02", "--idle-time", "0.5", "--no-peers",
        "--no-micro", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    rows = {r["kind"]: r for r in doc["results"]}
    assert {"ipcgw", "raw"} <= set(rows)
    for r in rows.values():
        assert r["note"] == "" and r["transport"] == "shm", r
        assert r["lat_p50_us"] > 0 and r["mb_per_s"] > 0
    assert rows["ipcgw"]["p50_vs_raw"] > 0
    if "c" in rows:
        assert rows["ipcgw"]["p50_vs_c"] > 0
    assert not any("no raw-Python or C reference" in n for n in doc["notes"])

    targets = doc["shm_targets"]
    assert targets["p50_64B"]["met"] is None and targets["mb_per_s_1MiB"]["met"] is None
    assert 0 <= doc["shm_idle"]["cpu_percent"] < 50
    assert targets["idle_cpu"]["met"] in (True, False)
    md = (out / "report.md").read_text()
    section = md.split("## shm targets", 1)[1].split("\n## ", 1)[0]
    if placement == "cross":
        assert "no syscall transport (fifo, sysv, posixmq, tcp, unix) ran at 64 B" in section
    assert "idle CPU, one connected silent client" in section
    assert "✓" in section or "✗" in section
    assert "| shm |" in md.split("## Targets", 1)[1]  # the xraw columns fill in for shm
    assert not _our_shm_names()


# ---------------------------------------------------------------- a fair floor, rounds, the report


def test_floor_is_the_smallest_p50_minus_the_added_work() -> None:
    """An echo that works 5 us and answers in 34.4 us beats the plain one at 45.7 us:
    the floor is 29.4 us, found at 5 us of work; ties go to less work."""
    from ipcgw_bench.cfloor import WORK_US, pick_floor

    assert WORK_US[0] == 0 and list(WORK_US) == sorted(WORK_US)
    floor, work = pick_floor({0: 45.7, 2: 40.0, 5: 34.4, 10: 41.0, 20: 52.0})
    assert (round(floor, 3), work) == (29.4, 5)
    assert pick_floor({0: 10.0, 2: 12.0, 5: 15.0}) == (10.0, 0)  # where work only adds
    assert pick_floor({0: 12.0, 2: 14.0}) == (12.0, 0)
    with pytest.raises(ValueError):
        pick_floor({})


def _hist(p50_ns: int, n: int = 50) -> Histogram:
    h = Histogram()
    h.record_many([p50_ns] * n)
    return h


def test_merged_rounds_keep_each_round_and_the_floor_of_all_rounds() -> None:
    from ipcgw_bench.measure import merge_rounds

    rounds = []
    for i, (plain, worked) in enumerate(((45_000, 36_000), (47_000, 34_000), (46_000, 35_000))):
        rec = _record("c", "unix", plain, 1000 * (i + 1), placement="cross")
        rec.extra["work_hists"] = {0: _hist(plain), 5: _hist(worked)}
        rec.extra["floor_us"] = worked / 1000 - 5
        rounds.append(rec)
    rounds.append(Record("c", "unix", "", "cross", 64, note="error: RuntimeError: boom"))
    merged = merge_rounds(rounds)
    assert merged.rtt_count == 300 and merged.tp_msgs == 6000 and merged.hist.total == 300
    assert len(merged.extra["rounds"]) == 4 and merged.extra["rounds"][3] is None
    assert [r["floor_us"] for r in merged.extra["rounds"][:3]] == [31.0, 29.0, 30.0]
    assert merged.extra["floor_work_us"] == 5
    assert merged.extra["floor_us"] == pytest.approx(30.0, abs=0.2)  # p50 of the merged 5 us runs
    assert merged.note.startswith("1 of 4 rounds failed")
    row = merged.row()
    assert row["rounds"] == 4 and row["lat_floor_us"] == merged.extra["floor_us"]


def _rounds(rec: Record, p50s_us: list[float], mbs: list[float],
            floors: list[float] | None = None) -> Record:
    rec.extra["rounds"] = [{"p50_us": p, "mb_per_s": m, "floor_us": f}
                           for p, m, f in zip(p50s_us, mbs, floors or [None] * len(p50s_us),
                                              strict=True)]
    if floors:
        rec.extra["floor_us"] = statistics.median(floors)
    return rec


def test_ratios_are_the_median_of_per_round_ratios_with_their_spread() -> None:
    gw = _rounds(_record("ipcgw", "unix", 60_000, 1, placement="cross", framing="length:4"),
                 [60.0, 90.0, 66.0], [10.0, 10.0, 10.0])
    raw = _rounds(_record("raw", "unix", 30_000, 1, placement="cross"), [30.0, 30.0, 60.0],
                  [20.0, 40.0, 10.0])
    c = _rounds(_record("c", "unix", 45_000, 1, placement="cross"), [45.0, 45.0, 45.0],
                [20.0, 20.0, 20.0], floors=[30.0, 30.0, 33.0])
    row = rows_with_ratios([gw, raw, c])[0]
    assert row["p50_vs_raw"] == pytest.approx(2.0)  # rounds 2.0, 3.0, 1.1: the median
    assert row["p50_vs_raw_spread"] == [1.1, 3.0] and row["p50_vs_raw_rounds"] == 3
    assert row["tp_vs_raw"] == pytest.approx(0.5)  # 0.5, 0.25, 1.0
    assert row["p50_vs_c"] == pytest.approx(2.0)  # against the floor (60/30, 90/30, 66/33)
    assert row["p50_vs_c_spread"] == [2.0, 3.0]


def test_same_cpu_shm_row_is_judged_against_its_targets() -> None:
    from ipcgw_bench.report import shm_targets

    recs = [_record("ipcgw", t, p50, msgs, placement=pl, size=size, framing="length:4")
            for pl in ("same", "cross")
            for t, p50, msgs, size in (("shm", 8_000, 5000, 1 << 20), ("unix", 20_000, 3000, 1 << 20),
                                       ("shm", 8_000, 1, 64), ("unix", 20_000, 1, 64))]
    cfg = {**_cfg(["shm", "unix"]), "placements": ["same", "cross"]}
    t = shm_targets(rows_with_ratios(recs), cfg, None)
    same = t["same"]
    assert same["placement"] == "same"
    assert same["p50_64B"]["ratio"] == pytest.approx(2.5, rel=0.01) and same["p50_64B"]["met"] is False
    assert same["mb_per_s_1MiB"]["best"] == "unix" and same["mb_per_s_1MiB"]["met"] is True
    assert "same" not in shm_targets(rows_with_ratios(recs), _cfg(["shm", "unix"]), None)


def _report_doc() -> dict:
    sizes = [64, 1024, 64 * 1024, 1 << 20]
    records = []
    for pl in ("same", "cross"):
        for size in sizes:
            for t in ("unix", "shm"):
                records.append(_record("ipcgw", t, 123_400, 1000, placement=pl, size=size,
                                       framing="length:4"))
                records.append(_record("raw", t, 12_340, 1000, placement=pl, size=size))
                c = _record("c", t, 8_000, 2000, placement=pl, size=size)
                if pl == "cross":
                    c.extra.update(floor_us=6.0, floor_work_us=2)
                records.append(c)
    cfg = {"transports": ["unix", "shm"], "framings": ["length:4"], "sizes": sizes,
           "placements": ["same", "cross"], "placement_cpus": {"same": {"server": 0, "client": 0},
                                                              "cross": {"server": 0, "client": 1}},
           "lat_time_s": 1.0, "tp_time_s": 1.0, "rounds": 5, "work_us": [0, 2, 5, 10, 20]}
    rates = [{"transport": t, "framing": "length:4", "rate": r, "seconds": 2.0, "achieved": r,
              "server_percent": 1.0, "client_percent": 2.0, "cpu_percent": 3.0,
              "us_per_msg": 300.0, "server_cpu": 0, "client_cpu": 1}
             for t in ("unix", "shm") for r in (100, 1000, 10000)]
    rates += [{"transport": "floor", "framing": "", "rate": r, "seconds": 2.0, "achieved": r,
               "wake_us": 50.0, "us_per_msg": 100.0, "cpu_percent": 1.0, "client_cpu": 1}
              for r in (100, 1000, 10000)]
    return {"machine": {"date": "d", "cores": 2, "loadavg_start": [2.0, 1, 1],
                        "loadavg_end": [2.0, 1, 1],
                        "others_cpu": {"cpu_s": 300.0, "cores": 2, "percent_of_machine": 30.0}},
            "config": cfg, "notes": [], "records": records, "cpu_at_rates": rates}


def test_report_opens_with_the_figure_and_explains_the_targets(tmp_path: Path) -> None:
    from ipcgw_bench.report import write_report

    doc = _report_doc()
    for rec in doc["records"]:
        if rec.kind == "ipcgw":
            rec.cpu_client_rtt = 0.003  # 30 µs a round trip against the references' 10
    written = write_report(doc, tmp_path)
    md = (tmp_path / "report.md").read_text()
    head, targets = md.split("\n## Targets\n", 1)
    targets = targets.split("\n## ", 1)[0]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plots skipped" in md
    else:
        assert (tmp_path / "summary.png") in written
        assert md.index("](summary.png)") < md.index("## Conditions") < md.index("## Targets")
        assert md.index("](summary.png)") == min(md.index(f"]({p.name})") for p in written
                                                 if p.suffix == ".png")
        assert "p50" in head and "p99" in head and "C floor" in head
    # whose targets, what a ratio means, the spread, and one number format
    assert "ipcgw's own performance targets" in targets and "ipcgw \u00f7 reference" in targets
    assert "lower is better" in targets and "higher is better" in targets
    assert "min\u2013max" in targets and "of 20 targets met" in targets
    assert "| unix | cross |" in targets and "10.00\u00d7" in targets
    assert "other processes" in head and "shared" in head  # the load of other people's work
    assert "| same | ipcgw | unix | length:4 | 123 | 123 |" in md  # integers above 100 µs
    assert "| same | raw | unix | - | 12.3 | 12.3 |" in md  # one decimal below
    assert "floor 6.0 µs (work 2 µs)" in md
    assert not re.search(r"\d\.\d\dx", targets)  # ratios carry the times sign
    assert "20.57\u00d7" in targets  # across CPUs p50 \u00f7 C is against the floor (123.4 / 6.0)
    assert "## CPU at realistic message rates" in md and "10,000 msg/s" in md
    # a missed target says where the time went, from the same run's CPU figures
    assert "### Where the missed targets' time goes" in targets
    assert ("- unix same, p50 64 B ÷ raw Python = 10.00\u00d7: ipcgw 50.0 µs of CPU per round "
            "trip (client 30.0 + server 20.0), raw Python 30.0 (10.0 + 20.0): +20.0 µs in "
            "ipcgw's layers") in targets
    assert "| floor: 2 bare wake-ups | 1.0 % · 100 (one wake-up 50.0) |" in md
    assert "300 = 3.0\u00d7 floor" in md and "| floor |" not in md
    assert "2^" not in md and "2\u2076" not in md


def test_summary_figure_labels_sizes_and_tells_the_series_apart(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from ipcgw_bench.report import SERIES, summary_series, write_report

    styles = [(color, marker, filled) for _, _, color, marker, filled in SERIES]
    assert len(set(styles)) == len(SERIES) and len({label for _, label, *_ in SERIES}) == len(SERIES)
    assert len({(c, m) for c, m, _ in styles}) == len(SERIES)  # not by fill alone
    kept: list = []
    monkeypatch.setattr(plt, "close", kept.append)
    doc = _report_doc()
    write_report(doc, tmp_path)
    fig = next(f for f in kept if f._suptitle and "p99" in f._suptitle.get_text())
    axes = fig.get_axes()
    assert len(axes) == 4  # 2 placements x 2 transports
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["64 B", "1 KiB", "64 KiB", "1 MiB"]
    assert {ax.get_title() for ax in axes} >= {"unix", "shm"}
    ylabels = " ".join(ax.get_ylabel() for ax in axes)
    assert "same CPU" in ylabels and "across CPUs" in ylabels
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "ipcgw" and any("raw Python" in t for t in legend)
    assert any(t.startswith("C floor") for t in legend) and any(t.startswith("C (") for t in legend)
    series = summary_series(rows_with_ratios(doc["records"]), "length:4")
    assert ("floor", "unix", "cross") in series and ("floor", "unix", "same") not in series
    assert series[("ipcgw", "shm", "same")][0] == (64, 123.4, 123.4)
    monkeypatch.undo()
    for f in kept:
        plt.close(f)


def test_cpu_at_a_rate_of_a_real_server(tmp_path: Path) -> None:
    """100 round trips/s for 0.4 s: the count comes back, CPU is split by side."""
    from ipcgw_bench.idle import measure_rate
    from ipcgw_bench.servers import BenchServer, fresh_url

    server = BenchServer(fresh_url("unix", "length:4", str(tmp_path)), 0, None, str(tmp_path))
    try:
        r = measure_rate(server.url, server.pid, 100, 0.4, 1 if _placement() == "cross" else 0)
    finally:
        server.stop()
    assert r["rate"] == 100 and r["achieved"] > 0 and r["source"] == "schedstat"
    assert r["cpu_percent"] == pytest.approx(r["server_percent"] + r["client_percent"], abs=0.02)
    assert r["us_per_msg"] > 0


def test_the_wake_up_floor_is_the_pacing_child_alone() -> None:
    """The floor at a rate: the same pacing child, no connection; a round trip is two
    of its wake-ups (the client's timer, the server's wait)."""
    from ipcgw_bench.idle import WAKES_PER_ROUND_TRIP, measure_wake_floor

    r = measure_wake_floor(200, 0.4, 1 if _placement() == "cross" else 0)
    assert r["rate"] == 200 and r["achieved"] > 100 and r["source"] == "schedstat"
    assert r["wake_us"] > 0
    assert r["us_per_msg"] == pytest.approx(r["wake_us"] * WAKES_PER_ROUND_TRIP, rel=0.01)


def test_raw_shm_ref_runs_on_ipcgw_rings_and_names_nothing() -> None:
    from ipcgw_bench import shmring
    from ipcgw_bench.refs import make_ref

    if os.environ.get("IPCGW_REQUIRE_SHM_C"):
        assert shmring.IMPL == "C"
    before = set(os.listdir("/dev/shm"))
    with make_ref("raw", "shm", "pp", 64, 0, 30.0) as ref:
        ref.rtt(b"y" * 64)
        assert bytes(ref._buf[:64]) == b"y" * 64
        assert set(os.listdir("/dev/shm")) - before == set()
        ref.finish()
