"""``ipcgw experiment``: statistics and video scoring (no root), then real matrices
in namespaces checked against ground truth (root; forced in CI)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ipcgw_bench.experiments.config import ConfigError, parse, parse_size
from ipcgw_bench.experiments.stats import summarize, t975
from ipcgw_bench.experiments.video import frame_sizes, score

EXAMPLES = Path(__file__).resolve().parents[1] / "bench" / "experiments" / "examples"


# ---------------------------------------------------------------- statistics


def test_t_quantiles_and_ci_match_textbook_values() -> None:
    assert t975(1) == pytest.approx(12.706)
    assert t975(4) == pytest.approx(2.776)
    assert t975(30) == pytest.approx(2.042)
    assert 1.96 <= t975(500) < 2.0
    s = summarize([1, 2, 3, 4, 5])
    assert (s.n, s.mean) == (5, 3.0)
    assert s.std == pytest.approx(math.sqrt(2.5))
    assert s.ci95 == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert s.low < 3 < s.high


def test_summary_of_few_or_missing_values() -> None:
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)
    one = summarize([2.5])
    assert one.mean == 2.5 and math.isnan(one.ci95)
    assert summarize([1.0, float("nan"), 3.0]).n == 2
    assert summarize([4.0, 4.0, 4.0]).ci95 == 0.0


# ---------------------------------------------------------------- video scoring


def test_video_all_frames_on_time() -> None:
    arrivals = [0.5 + i * 0.04 for i in range(25)]  # 25 fps, everything 0.5 s in advance
    s = score(arrivals, fps=25, startup_s=1.0, start=0.0)
    assert (s.frames, s.received, s.on_time, s.stalls, s.stall_time_s) == (25, 25, 25, 0, 0.0)
    assert s.on_time_ratio == 1.0


def test_video_one_late_frame_stalls_once_and_shifts_the_rest() -> None:
    fps, startup = 10.0, 1.0
    arrivals = [startup + i / fps - 0.05 for i in range(10)]
    arrivals[3] = startup + 0.3 + 0.5  # due at 1.3 s, arrives at 1.8 s
    arrivals[4] = 1.81  # due 1.4 fixed; the buffering player now wants it at 1.9: fine
    s = score(arrivals, fps, startup)
    assert s.stalls == 1
    assert s.stall_time_s == pytest.approx(0.5)
    assert s.on_time == 8  # frames 3 and 4 missed their fixed deadlines
    assert s.max_late_s == pytest.approx(0.5)


def test_video_missing_frames_count_as_late_and_end_playback() -> None:
    s = score([0.1, 0.2, None, None], fps=10, startup_s=0.5)
    assert (s.received, s.on_time, s.stalls) == (2, 2, 0)
    with pytest.raises(ValueError):
        score([0.1], fps=0, startup_s=1)


def test_frame_sizes_match_the_bitrate_and_have_i_frames() -> None:
    sizes = frame_sizes(bitrate_mbit=4.0, fps=25, duration_s=4, seed=3)
    assert len(sizes) == 100
    assert sum(sizes) * 8 / 4 / 1e6 == pytest.approx(4.0, rel=0.01)
    assert sizes[0] > 2 * sizes[1]  # an I frame leads each group
    assert frame_sizes(4.0, 25, 4, seed=3) == sizes


# ---------------------------------------------------------------- configuration


def test_config_expands_the_matrix() -> None:
    exp = parse({"repetitions": 2, "policies": ["kernel", "rssi"], "transports": ["unix", "fifo"],
                 "setup": [{"name": "a", "paths": [{}, {}]}],
                 "workload": [{"kind": "file", "sizes": ["64K", "1M"]}, {"kind": "video"}]})
    cells = exp.cells()
    # kernel: no gateway, so one transport "-"; rssi: one cell per transport
    assert len(cells) == 2 * (1 + 2) * 3
    assert len({c.key for c in cells}) == len(cells)
    assert {c.transport for c in cells if c.policy.name == "kernel"} == {"-"}
    assert [c.rep for c in cells[:9]] == [0] * 9  # repetition-major
    assert {c.seed for c in cells} == {1, 2}
    assert parse_size("32MB") == 32 << 20 and parse_size("64K") == 65536


@pytest.mark.parametrize("raw, words", [
    ({"setup": [{}], "workload": [{"kind": "file", "sizes": ["1K"]}], "bogus": 1}, "bogus"),
    ({"setup": [{"dataplane": "tap"}], "workload": [{"kind": "video"}]}, "dataplane"),
    ({"setup": [{}], "workload": [{"kind": "file"}]}, "sizes"),
    ({"setup": [{}], "workload": [{"kind": "video"}], "transports": ["carrier-pigeon"]},
     "transport"),
    ({"setup": [{}], "workload": [{"kind": "file", "sizes": ["1Q"]}]}, "size"),
])
def test_bad_configs_name_the_problem(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse(raw)


def test_shipped_examples_parse() -> None:
    from ipcgw_bench.experiments.config import load

    for name in ("quick", "seed", "ns3"):
        assert load(EXAMPLES / f"{name}.toml").cells()


# ---------------------------------------------------------------- report and compare (no root)


def _fake(out: Path, scale: float) -> None:
    out.mkdir()
    with (out / "results.jsonl").open("w") as f:
        for rep in range(3):
            for size in (65536, 1 << 20):
                f.write(json.dumps({
                    "key": f"s|kernel|-|file:{size}|{rep}", "status": "ok", "setup": "s",
                    "dataplane": "veth", "dataplane_ran": "veth", "policy": "kernel",
                    "transport": "-", "workload": "file", "label": f"file:{size}", "size": size,
                    "rep": rep, "bytes": size, "time_s": scale * size / 1e6 * (1 + rep / 10),
                    "retrans": rep, "lost_pkts": 0, "p1_bytes": size, "p2_bytes": 0,
                    "bytes_sent_total": size}) + "\n")
        f.write(json.dumps({"key": "s|kernel|-|file:x|0", "status": "failed", "setup": "s",
                            "reason": "timeout: boom", "label": "file:x"}) + "\n")


def test_report_and_compare_from_results_alone(tmp_path: Path) -> None:
    from ipcgw_bench.experiments.report import build_report, compare

    a, b = tmp_path / "a", tmp_path / "b"
    _fake(a, 1.0)
    _fake(b, 2.0)
    text = build_report(a).read_text()
    assert "## File transfers" in text and "## Failed cells" in text and "timeout: boom" in text
    assert len((a / "results.csv").read_text().splitlines()) == 1 + 7
    diff = compare(a, b)
    assert "+100.0 %" in diff  # B is twice as slow
    assert "time_s" in diff


def test_report_puts_kernel_retransmissions_next_to_losses_per_path_and_cause(
        tmp_path: Path) -> None:
    from ipcgw_bench.experiments.report import build_report

    out = tmp_path / "r"
    out.mkdir()
    with (out / "results.jsonl").open("w") as f:
        for rep in range(2):
            f.write(json.dumps({
                "key": f"n|rssi|unix|file:1|{rep}", "status": "ok", "setup": "n",
                "dataplane": "ns3", "policy": "rssi", "transport": "unix", "workload": "file",
                "label": "file:1", "size": 1, "rep": rep, "bytes": 1, "time_s": 1.0,
                "p1_retrans": 10 + rep, "p2_retrans": 0, "p1_loss_error_model": 9 + rep,
                "p2_loss_phy_PREAMBLE_DETECT_FAILURE": 40, "p2_loss_mac_retry_limit": 1}) + "\n")
    text = build_report(out).read_text()
    table = text[text.index("## Losses per path and cause"):]
    header = next(line for line in table.splitlines() if line.startswith("| setup"))
    # losses for good first, PHY attempts last
    assert header.index("error_model") < header.index("mac_retry_limit") < \
        header.index("phy_PREAMBLE_DETECT_FAILURE")
    assert "| n | rssi/unix | 1 | 2 | 10.5 ± 6.4 | 9.5 ± 6.4 | 0 | 0 |" in table
    assert "| n | rssi/unix | 2 | 2 | 0 ± 0 | 0 | 1 ± 0 | 40 ± 0 |" in table


# ---------------------------------------------------------------- real runs (root)


PREFIX = "ixt"


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Every namespace a run makes (prefix ``ixt``) is gone afterwards."""
    from conftest import require_netns
    from netns_helpers import require_nft

    require_netns()
    require_nft()
    from pyroute2 import netns

    before = {n for n in netns.listnetns() if n.startswith(PREFIX)}
    yield
    after = {n for n in netns.listnetns() if n.startswith(PREFIX)}
    assert after <= before, f"namespaces left behind: {sorted(after - before)}"


@pytest.mark.netns
@pytest.mark.slow
def test_quick_example_produces_a_complete_report(tmp_path: Path, no_leftovers: None) -> None:
    """quick.toml through the CLI: 8 cells, all ok, every section and plot, and the
    RSSI policy's handover timed through the unix transport."""
    from ipcgw_bench.experiments.cli import experiment

    out = tmp_path / "quick"
    result = CliRunner().invoke(experiment, ["run", str(EXAMPLES / "quick.toml"),
                                             "--out", str(out), "--prefix", PREFIX])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 8
    assert all(r["status"] == "ok" for r in records), [r["reason"] for r in records]
    for r in records:
        assert r["bytes"] == r["size"] and r["checksum_ok"]
        assert r["dataplane_ran"] == "veth"
    rssi = [r for r in records if r["policy"] == "rssi"]
    assert all(r["reports"] > 5 and 0 < r["reaction_ms"] < 1000 for r in rssi), rssi
    report = (out / "report.md").read_text()
    for section in ("## File transfers", "## Path-manager reaction time", "## Versions",
                    "## Configuration", "kernel 6.", "time_vs_size.png"):
        assert section in report
    for png in ("time_vs_size.png", "retrans_vs_size.png", "losses_vs_size.png",
                "reaction_per_transport.png"):
        assert (out / png).stat().st_size > 1000
    assert len((out / "results.csv").read_text().splitlines()) == 9


GROUND_TRUTH = {
    "name": "truth", "repetitions": 1, "seed": 5, "timeout_s": 30,
    "policies": ["kernel", "ipcgw_bench.experiments.nowhere:NoPolicy"], "transports": ["unix"],
    "setup": [{"name": "clean", "paths": [{"rate_mbit": 20}, {"rate_mbit": 20}]},
              {"name": "lossy", "paths": [{"rate_mbit": 20, "loss_pct": 3},
                                          {"rate_mbit": 20, "loss_pct": 3}]}],
    "workload": [{"kind": "file", "sizes": ["64K", "1M"]}],
}


@pytest.mark.netns
@pytest.mark.slow
def test_measures_match_ground_truth_failures_are_isolated_and_resume_works(
        tmp_path: Path, no_leftovers: None) -> None:
    from ipcgw_bench.experiments.report import build_report, compare
    from ipcgw_bench.experiments.runner import run_experiment

    exp = parse(GROUND_TRUTH)
    out = tmp_path / "truth"
    seen: list[str] = []
    run_experiment(exp, out, progress=lambda i, n, rec: seen.append(rec["key"]), prefix=PREFIX)
    lines = (out / "results.jsonl").read_text().splitlines()
    by = {r["key"]: r for r in map(json.loads, lines)}
    assert len(by) == len(lines) == 8

    # a failing cell (its policy cannot be loaded) is recorded, the rest ran
    bad = [r for r in by.values() if r["policy"] == "NoPolicy"]
    assert len(bad) == 4 and all(r["status"] == "failed" and "nowhere" in r["reason"] for r in bad)
    good = {(r["setup"], r["size"]): r for r in by.values() if r["policy"] == "kernel"}
    assert all(r["status"] == "ok" for r in good.values()), [r["reason"] for r in good.values()]

    for (_setup, size), r in good.items():
        assert r["bytes"] == size and r["checksum_ok"]
        assert r["bytes_sent_total"] >= size  # the sender's subflows carried it all
    assert good[("clean", 65536)]["lost_pkts"] == 0
    assert good[("clean", 1 << 20)]["lost_pkts"] == 0
    assert good[("clean", 1 << 20)]["retrans"] == 0
    assert good[("lossy", 1 << 20)]["lost_pkts"] > 0
    assert good[("lossy", 1 << 20)]["retrans"] > 0
    assert good[("clean", 1 << 20)]["time_s"] > good[("clean", 65536)]["time_s"]
    # 1 MiB at 2 x 20 Mbit/s cannot take less than 0.2 s of serialisation
    assert good[("clean", 1 << 20)]["time_s"] > (1 << 20) * 8 / 40e6

    # without --resume an existing result file is not overwritten
    with pytest.raises(FileExistsError):
        run_experiment(exp, out, prefix=PREFIX)
    # interrupted after 7 cells: resume runs exactly the missing one
    (out / "results.jsonl").write_text("\n".join(lines[:7]) + "\n")
    again: list[str] = []
    run_experiment(exp, out, resume=True, progress=lambda i, n, rec: again.append(rec["key"]),
                   prefix=PREFIX)
    assert again == [json.loads(lines[7])["key"]]
    after = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in after[:7]] == [json.loads(x)["key"] for x in lines[:7]]
    assert [r["started"] for r in after[:7]] == [json.loads(x)["started"] for x in lines[:7]]
    # nothing left: resume runs nothing
    run_experiment(exp, out, resume=True, progress=lambda *a: pytest.fail("ran a done cell"),
                   prefix=PREFIX)

    report = build_report(out).read_text()
    assert "4 ok, 4 failed" in report and "## Failed cells" in report
    diff = compare(out, out)
    assert "| clean | file:1M | kernel | time_s |" in diff and "+0.0 %" in diff


def _require_ns3_wheel() -> None:
    import importlib.util
    import os

    if importlib.util.find_spec("ns") is None:
        if os.environ.get("IPCGW_REQUIRE_NS3") == "1":
            pytest.fail("IPCGW_REQUIRE_NS3=1 but the ns3 wheel is not installed")
        pytest.skip("needs the ns3 wheel (the [ns3] extra)")


@pytest.mark.netns
@pytest.mark.ns3
@pytest.mark.slow
def test_ns3_cell_runs_in_the_simulated_paths_and_times_the_handover(
        tmp_path: Path, no_leftovers: None) -> None:
    """One cell on the NS-3 data plane: the simulation reports its station's RSSI
    through a unix socket, the RSSI policy flips the WiFi endpoint, the file arrives."""
    _require_ns3_wheel()
    from ipcgw_bench.experiments.runner import run_experiment

    exp = parse({"name": "ns3", "repetitions": 1, "timeout_s": 90, "policies": ["rssi"],
                 "transports": ["unix"],
                 "setup": [{"name": "ns3", "dataplane": "ns3", "hold_s": 4,
                            "paths": ["p2p:rate=10,delay=10", "wifi:start=40,speed=5"]}],
                 "workload": [{"kind": "file", "sizes": ["256K"]}]})
    out = tmp_path / "ns3"
    run_experiment(exp, out, prefix=PREFIX)
    (rec,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["dataplane_ran"] == "ns3"
    assert rec["bytes"] == 256 * 1024 and rec["checksum_ok"]
    # 10 ms one way on path 1: no transfer is faster than one round trip
    assert rec["time_s"] > 0.02
    assert rec["p1_lost_pkts"] == 0  # a lossless, uncongested p2p path
    assert rec["reports"] > 5 and rec["reaction_ms"] is not None
    assert 0.5 < rec["handover_sim_s"] < 4.0


@pytest.mark.parametrize(("policy", "words"), [
    ("rssi?treshold=-78", "policy 'rssi?treshold=-78': RssiPolicy has no parameter 'treshold'; did you mean"),
    ({"spec": "rssi", "args": {"alpha": "x"}}, "alpha='x' is not float"),
    ({"spec": "rssi", "arg": {}}, "unknown key(s) ['arg']"),
])
def test_policy_parameters_are_checked_when_the_file_loads(policy: Any, words: str) -> None:
    raw = {"setup": [{"dataplane": "veth"}], "workload": [{"kind": "file", "sizes": ["64K"]}],
           "policies": [policy]}
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert words in str(info.value)


def test_policy_parameters_in_a_spec_reach_the_policy() -> None:
    raw = {"setup": [{"dataplane": "veth"}], "workload": [{"kind": "file", "sizes": ["64K"]}],
           "policies": ["rssi?threshold=-75&tau_ms=300",
                        {"name": "strict", "spec": "rssi", "args": {"threshold_dbm": -70}}]}
    exp = parse(raw)
    specs = [(p.name, p.spec, p.args) for p in exp.policies]
    q = "threshold=-75&tau_ms=300"
    assert specs == [(f"rssi?{q}", f"ipcgw.mptcp.policy:RssiPolicy?{q}", {}),
                     ("strict", "ipcgw.mptcp.policy:RssiPolicy", {"threshold_dbm": -70})]
    from ipcgw.mptcp.policy import build_policy

    p = build_policy(exp.policies[0].spec or "", exp.policies[0].args)
    assert (p.threshold_dbm, p.tau_ms) == (-75.0, 300.0)  # type: ignore[attr-defined]


@pytest.mark.netns
def test_experiment_run_exits_non_zero_when_a_cell_failed(tmp_path: Path, no_leftovers: None) -> None:
    import subprocess
    import sys

    config = tmp_path / "broken.toml"
    config.write_text(
        'name = "broken"\nrepetitions = 1\nseed = 1\ntimeout_s = 20\n'
        'policies = ["ipcgw_bench.experiments.nowhere:NoPolicy"]\ntransports = ["unix"]\n'
        '[[setup]]\nname = "s"\npaths = [{rate_mbit = 20}, {rate_mbit = 20}]\n'
        '[[workload]]\nkind = "file"\nsizes = ["64K"]\n')
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ipcgw", "experiment", "run", str(config),
                          "--out", str(out), "--prefix", PREFIX], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 of 1 cells failed" in run.stderr and "Traceback" not in run.stderr
    assert (out / "report.md").exists()  # the report is still written


@pytest.mark.netns
def test_sigterm_during_a_cell_removes_its_namespaces_and_says_how_to_resume(
        tmp_path: Path, no_leftovers: None) -> None:
    import signal
    import subprocess
    import sys
    import time

    from pyroute2 import netns

    config = tmp_path / "long.toml"
    config.write_text(
        'name = "long"\nrepetitions = 1\nseed = 1\ntimeout_s = 60\n'
        'policies = ["kernel"]\ntransports = ["unix"]\n'
        '[[setup]]\nname = "s"\npaths = [{rate_mbit = 2}, {rate_mbit = 2}]\n'
        '[[workload]]\nkind = "file"\nsizes = ["16M"]\n')  # ~30 s at 4 Mbit/s
    proc = subprocess.Popen([sys.executable, "-m", "ipcgw", "experiment", "run", str(config),
                             "--out", str(tmp_path / "out"), "--prefix", PREFIX],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(n.startswith(PREFIX) for n in netns.listnetns()):
            assert time.monotonic() < deadline and proc.poll() is None, "no cell started"
            time.sleep(0.1)
        time.sleep(2.0)  # the transfer is under way
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "interrupted" in err and "--resume" in err, err
    assert "Traceback" not in err, err


def test_error_bars_stay_inside_what_the_measure_can_be_and_say_n() -> None:
    from ipcgw_bench.experiments.report import _bounded_err, _n_label
    from ipcgw_bench.experiments.stats import summarize

    on_time = summarize([0.99, 1.0, 0.97])  # a share: the bar must not pass 100 %
    losses = summarize([0.0, 0.0, 9.0])  # a count: the bar must not go below 0
    below, above = _bounded_err([on_time], 100.0, 0.0, 100.0)
    assert on_time.mean * 100 + above[0] <= 100.0 and below[0] > 0
    below, above = _bounded_err([losses])
    assert losses.mean - below[0] >= 0.0 and above[0] == pytest.approx(losses.ci95)
    assert _n_label([on_time, losses]) == "mean ± 95 % CI, n = 3 per point"


def test_report_warns_when_a_mean_rests_on_fewer_than_3_repetitions(tmp_path: Path) -> None:
    from ipcgw_bench.experiments.report import build_report

    rows = [{"key": f"s|kernel|-|file:65536|{rep}", "status": "ok", "setup": "s",
             "dataplane": "veth", "dataplane_ran": "veth", "policy": "kernel", "transport": "-",
             "workload": "file", "label": "file:65536", "size": 65536, "rep": rep, "bytes": 65536,
             "time_s": 0.1 + rep / 100, "retrans": 0, "lost_pkts": 0, "p1_bytes": 65536,
             "p2_bytes": 0, "bytes_sent_total": 65536} for rep in range(2)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(tmp_path).read_text()
    assert "Warning: some means rest on n = 2 repetition(s)" in report
