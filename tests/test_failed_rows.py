"""Failed measurements as rows, faults in the plan, and what --resume reads back: the parts
that need no cluster (the runs themselves are in test_faults.py)."""
from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from k8stopo import analysis, bench, experiment, faults, measure, plots, results
from k8stopo.spec import FAULTS, BenchSpec, SpecError

from synthetic import context, fixture_rows, write_csv

FAULT: dict[str, object] = {"fault": "underlay-link-down"}


def failed_row(cni: str, scenario: str, protocol: str, repeat: int, error: str,
               extra: dict[str, object] | None = None) -> dict[str, object]:
    ctx = context(cni, scenario, protocol, repeat, extra={**(extra or {}), "error": error})
    return results.rows(ctx, f"2026-11-25T00:1{repeat}:00Z",
                        [measure.Sample(bench.FAILED, 1, "count")])[0]


@pytest.fixture
def with_failures(tmp_path: Path) -> pd.DataFrame:
    """Regular rows, plus rows under a fault: cross-node failed every time (no value at all),
    same-node measured."""
    rows = fixture_rows(("tcp", "icmp"), extra={"fault": "", "error": ""})
    same = [r for r in fixture_rows(("tcp", "icmp"), extra={**FAULT, "error": ""})
            if r["scenario"] == "pod-to-pod-same-node" and r["cni"] == "flannel-vxlan"]
    for repeat in (0, 1, 2):
        for protocol in ("tcp", "icmp"):
            for scenario in ("host-to-host", "pod-to-pod-cross-node"):
                rows.append(failed_row("flannel-vxlan", scenario, protocol, repeat,
                                       "iperf3: unable to connect to server: Connection "
                                       "timed out", FAULT))
    return results.load([write_csv(tmp_path / "r.csv", rows + same)])


def test_failed_rows_are_never_a_value_but_are_counted(with_failures: pd.DataFrame) -> None:
    table = analysis.describe(with_failures)
    assert bench.FAILED not in set(table["metric"])
    # the fault is a setup of its own: its same-node TCP is not pooled with the regular one
    df = analysis.with_setup(with_failures)
    assert {"fault=underlay-link-down"} <= {p for s in set(df["setup"]) for p in s.split(", ")}
    assert "error" not in analysis.parameters(df)
    regular = table[(table["setup"].str.contains("fault") == False)  # noqa: E712
                    & (table["metric"] == "throughput_bps") & (table["cni"] == "flannel-vxlan")
                    & (table["scenario"] == "pod-to-pod-same-node") & (table["protocol"] == "tcp")]
    assert list(regular["n"]) == [3]
    fails = analysis.failures(with_failures)
    assert set(zip(fails["scenario"], fails["protocol"], fails["failed"])) == {
        (s, p, 3) for s in ("host-to-host", "pod-to-pod-cross-node") for p in ("tcp", "icmp")}
    assert set(fails["error"]) == {"iperf3: unable to connect to server: Connection timed out"}
    summary = analysis.summary(with_failures)
    cross = summary[(summary["setup"].str.contains("fault=underlay-link-down"))
                    & (summary["scenario"] == "pod-to-pod-cross-node")]
    assert list(cross["failed"]) == [6] and list(cross["repeats"]) == [0]  # no value, 6 failed
    assert cross["tcp_gbps"].isna().all()
    assert (summary.loc[~summary["setup"].str.contains("fault"), "failed"] == 0).all()


def test_charts_and_summary_leave_failed_rows_out(with_failures: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    written = plots.plot_all(with_failures, tmp_path / "plots")
    assert tmp_path / "plots" / "tcp_throughput.png" in written
    md = (tmp_path / "plots" / "summary.md").read_text()
    assert "Failed measurements" in md and "3× iperf3: unable to connect" in md
    # every TCP bar comes from a throughput row: same medians with the failed rows dropped
    clean = with_failures[with_failures["metric"] != bench.FAILED]
    pd.testing.assert_frame_equal(analysis.describe(with_failures), analysis.describe(clean))
    assert "failed" not in analysis.summary(clean).columns  # no failures: the table as before


def test_a_torn_last_line_is_ignored_when_read(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    rows = fixture_rows(("tcp",))
    path = write_csv(tmp_path / "r.csv", rows[:4])
    whole = path.read_text()
    # a crash mid-write: the fifth row cut inside its value (a shorter, wrong number)
    line = whole.splitlines()[1].replace(str(rows[0]["value"]), "12")
    path.write_text(whole + line[: line.index(",12") + 3])
    with caplog.at_level(logging.WARNING, "k8stopo.results"):
        back = results.load([path])
    assert list(back["value"]) == [r["value"] for r in rows[:4]]
    assert "incomplete last line" in caplog.text
    assert results.complete_text(path) == whole


def test_reason_is_the_tools_own_words_on_one_line() -> None:
    try:
        try:
            raise measure.MeasurementError("iperf3: unable to connect to server: Connection "
                                           "refused")
        except measure.MeasurementError as inner:
            raise measure.MeasurementError("iperf3 pod-n1-0 -> 10.244.1.2 (pod-n2-0): "
                                           f"{inner} (stderr: a\nb)") from inner
    except measure.MeasurementError as exc:
        assert measure.reason(exc) == "iperf3: unable to connect to server: Connection refused"
    long = measure.MeasurementError("x\n" * 400)
    assert "\n" not in measure.reason(long) and len(measure.reason(long)) == measure.ERROR_CHARS


# --- faults in the plan ------------------------------------------------------------------

FOUR = ("host-to-host", "pod-to-pod-same-node", "pod-to-pod-cross-node", "node-to-pod")


def test_faults_follow_each_repeats_regular_steps() -> None:
    assert set(faults.FAULTS) == set(FAULTS)
    spec = BenchSpec(cnis=("flannel-vxlan",), scenarios=FOUR, protocols=("tcp",), repeat=2,
                     faults=("underlay-link-down", "node-stopped"))
    steps = bench.plan(spec)
    assert [(s.repeat, s.fault) for s in steps] == [
        (r, f) for r in (0, 1) for f, n in (("", 4), ("underlay-link-down", 4),
                                            ("node-stopped", 3)) for _ in range(n)]
    # a stopped node runs no client: same-node is not measured under node-stopped
    assert "pod-to-pod-same-node" not in {s.scenario for s in steps if s.fault == "node-stopped"}
    assert bench.skipped_lines(spec) == [
        "not measured under node-stopped: pod-to-pod-same-node: its client runs on the "
        "stopped node"]
    # a fault's cell never joins a regular one
    assert all(len({s.fault for s in cell}) == 1 for cell in bench._cells(steps))


def test_experiment_faults_key_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("faults: [underlay-link-down, node-stopped]\n")
    assert experiment.load(path)["faults"] == "underlay-link-down,node-stopped"
    path.write_text("faults: [switch-on-fire]\n")
    with pytest.raises(SpecError, match="unknown fault 'switch-on-fire'"):
        experiment.load(path)
    settings = experiment.load(Path(__file__).parent.parent / "experiments" / "faults.yaml")
    assert settings["faults"].split(",") == list(FAULTS)


# --- what --resume reads back -------------------------------------------------------------

def test_resume_skips_the_first_measurements_of_each_key_in_plan_order(tmp_path: Path) -> None:
    """Under a sweep, icmp rows do not record the streams value: the k-th measurement of a
    key on record is the k-th sweep value, as the plan measured them in order."""
    spec = BenchSpec(cnis=("host",), scenarios=("host-to-host",), protocols=("tcp", "icmp"),
                     repeat=2, sweep=("streams", (1, 2)))
    steps = bench.plan(spec)
    done: Counter[tuple[str, str, str, int, str]] = Counter(s.key for s in steps[:5])
    assert bench.remaining(steps, done) == steps[5:]
    assert bench.remaining(steps, Counter()) == steps
    assert bench.remaining(steps, Counter(s.key for s in steps)) == []


def test_last_run_counts_measurements_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with pytest.raises(SpecError, match="holds no run"):
        bench.last_run(path)
    rows = fixture_rows(("tcp", "icmp"), run_id="20261125T000000Z-aaaa")
    rows += fixture_rows(("tcp",), run_id="20261126T000000Z-bbbb")[:6]  # 3 measurements
    rows.append(failed_row("calico-bgp", "host-to-host", "tcp", 0, "refused") |
                {"run_id": "20261126T000000Z-bbbb", "raw_file": "raw/x/0009_failed.error.txt"})
    write_csv(path, rows)
    last = bench.last_run(path)
    assert last.run_id == "20261126T000000Z-bbbb"
    assert sum(last.done.values()) == 4
    assert last.done[("calico-bgp", "host-to-host", "tcp", 0, "")] == 1
    with path.open(newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
