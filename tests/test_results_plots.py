"""Results CSV writing/reading, the analysis behind the charts, and the charts themselves.

All rows come from tests/synthetic.py: SYNTHETIC, made-up values, no measurement.
"""
from __future__ import annotations

import csv
import importlib.util
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from k8stopo import analysis, plots, results, verdict

from synthetic import (
    CNIS,
    REPEATS,
    RUN,
    SCENARIOS,
    TCP_GBPS,
    Sample,
    context,
    fixture_rows,
    scale_rows,
    write_csv,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def df(tmp_path: Path) -> pd.DataFrame:
    return results.load([write_csv(tmp_path / "r.csv", fixture_rows())])


def header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


# --- the CSV ---------------------------------------------------------------------------

def test_rows_follow_columns_then_extra() -> None:
    ctx = context("host", "host-to-host", "tcp", 0, extra={"udp_bandwidth": "0", "offloads": "on"})
    got = results.rows(ctx, "2026-11-25T00:00:00Z",
                       [Sample("throughput_bps", 1.5e9, "bit/s"), Sample("retransmits", 3, "count")])
    assert [tuple(r) for r in got] == [results.COLUMNS + ("udp_bandwidth", "offloads")] * 2
    assert (got[0]["metric"], got[0]["value"], got[0]["unit"]) == ("throughput_bps", 1.5e9, "bit/s")
    assert got[1]["started_at"] == "2026-11-25T00:00:00Z" and got[1]["offloads"] == "on"


@pytest.mark.parametrize("name", ["value", "mtu", "Bad-Name", "extra"])
def test_extra_columns_must_be_new_names(name: str) -> None:
    with pytest.raises(ValueError, match="extra result column"):
        context("host", "host-to-host", "tcp", 0, extra={name: 1})


def test_sink_writes_header_once_and_appends_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "r.csv"  # parents are created
    rows = fixture_rows(("tcp",))
    write_csv(path, rows[:5])
    write_csv(path, rows[5:])
    lines = path.read_text().splitlines()
    assert header(path) == list(results.COLUMNS)
    assert lines.count(lines[0]) == 1
    assert list(results.load([path])["value"]) == [r["value"] for r in rows]


def test_sink_writes_header_into_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.touch()
    write_csv(path, fixture_rows(("tcp",))[:1])
    assert header(path) == list(results.COLUMNS)


def test_sink_refuses_a_header_without_the_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b,c\n1,2,3\n")
    for attempt in (results.check_appendable, results.CsvSink):
        with pytest.raises(ValueError, match=r"other.csv.*missing run_id.*refusing") as err:
            attempt(path)
        assert "\n" not in str(err.value)
    assert path.read_text() == "a,b,c\n1,2,3\n"  # untouched


def test_check_appendable_accepts_new_and_own_files(tmp_path: Path) -> None:
    results.check_appendable(tmp_path / "new.csv")
    results.check_appendable(write_csv(tmp_path / "own.csv", fixture_rows(("tcp",))))
    assert not (tmp_path / "new.csv").exists()  # checking creates nothing
    with pytest.raises(ValueError, match="directory"):
        results.check_appendable(tmp_path)


def test_sink_appends_under_a_reordered_header_in_its_order(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    order = list(reversed(results.COLUMNS))
    path.write_text(",".join(order) + "\n")
    rows = fixture_rows(("tcp",))[:4]
    write_csv(path, rows)
    assert header(path) == order
    back = results.load([path])
    for col in ("run_id", "cni", "scenario", "value", "raw_file"):
        assert list(back[col]) == [r[col] for r in rows]


def test_new_column_widens_old_file_keeping_every_old_cell(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    old = fixture_rows(("tcp",))
    write_csv(path, old)
    before = path.read_text().splitlines()
    new = fixture_rows(("udp",), run_id="run-2", extra={"udp_bandwidth": "500M"})
    write_csv(path, new)
    lines = path.read_text().splitlines()
    assert header(path) == list(results.COLUMNS) + ["udp_bandwidth"]
    assert [line.removesuffix(",") for line in lines[1:len(before)]] == before[1:]
    back = results.load([path])
    assert len(back) == len(old) + len(new)
    assert back["udp_bandwidth"].iloc[:len(old)].isna().all()
    assert set(back["udp_bandwidth"].iloc[len(old):]) == {"500M"}
    assert list(back["value"]) == [r["value"] for r in old + new]
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is gone


def test_two_sinks_on_one_file_lose_no_row_across_a_header_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    a, b = results.CsvSink(path), results.CsvSink(path)
    rows = fixture_rows(("tcp",))
    a.write(rows[:2])
    b.write(fixture_rows(("udp",), extra={"udp_bandwidth": "0"})[:2])  # rewrites the header
    a.write(rows[2:4])  # the old sink still lands in the file now in place
    assert len(results.load([path])) == 6


def test_sink_survives_reopen_after_interrupted_run(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    rows = fixture_rows(("tcp",))
    sink = results.CsvSink(path)
    sink.write(rows[:3])
    # the run dies here, in the middle of writing a fourth row
    with path.open("a") as f:
        f.write("20261125T000000Z-0000,2026-11-25T00:00:00Z,flannel-vxl")
    with results.CsvSink(path) as again:
        again.write(rows[3:6])
    back = results.load([path])
    assert list(back["value"]) == [r["value"] for r in rows[:6]]


def test_sink_refuses_rows_missing_a_column(tmp_path: Path) -> None:
    row = dict(fixture_rows(("tcp",))[0])
    del row["mtu"]
    with results.CsvSink(tmp_path / "r.csv") as sink, pytest.raises(ValueError, match="mtu"):
        sink.write([row])


def test_load_rejects_missing_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    pd.DataFrame(fixture_rows(("tcp",))).drop(columns=["kernel", "mtu"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"r.csv: missing required column.*mtu, kernel"):
        results.load([path])


def test_old_csv_with_only_spec_columns_loads_appends_and_plots(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    pd.DataFrame(fixture_rows(("tcp",)))[list(results.REQUIRED)].to_csv(path, index=False)
    write_csv(path, fixture_rows(("icmp",), extra={"offloads": "off"}))
    back = results.load([path])
    assert set(results.COLUMNS) <= set(back.columns)
    tcp = back[back["protocol"] == "tcp"]
    assert tcp["raw_file"].isna().all() and tcp["offloads"].isna().all()
    written = {p.name for p in plots.plot_all(back, tmp_path / "plots")}
    assert {"tcp_throughput.png", "rtt.png"} <= written


def test_load_concatenates_files_with_different_columns(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", fixture_rows(("tcp",)))
    b = write_csv(tmp_path / "b.csv", fixture_rows(("icmp",), extra={"msg_size": 64}))
    back = results.load([a, b])
    assert set(back["protocol"]) == {"tcp", "icmp"}
    assert back.loc[back["protocol"] == "tcp", "msg_size"].isna().all()


def test_find_and_load_experiment_pick_results_csvs_by_column_or_folder(tmp_path: Path) -> None:
    write_csv(tmp_path / "streams" / "a.csv", fixture_rows(("tcp",), extra={"experiment": "x"}))
    write_csv(tmp_path / "runs" / "b.csv", fixture_rows(("icmp",), extra={"experiment": "streams"}))
    write_csv(tmp_path / "streams" / "c.csv", fixture_rows(("udp",)))  # found by its folder
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "summary.csv").write_text("cni,scenario\nhost,host-to-host\n")
    assert {p.name for p in results.find(tmp_path)} == {"a.csv", "b.csv", "c.csv"}
    got = results.load_experiment("streams", tmp_path)
    assert set(got["protocol"]) == {"icmp", "udp"}  # a.csv says it belongs to experiment x
    assert results.load_experiment("nothing", tmp_path).empty


def test_run_id_and_timestamp_format() -> None:
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", results.new_run_id())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", results.utc_now())


def test_results_analysis_plots_import_without_mininet() -> None:
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'mininet': raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import k8stopo.results, k8stopo.analysis, k8stopo.plots, k8stopo.published\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr


# --- setups, pairing, statistics --------------------------------------------------------

def test_setup_splits_on_parameters_that_apply_to_the_protocol(tmp_path: Path) -> None:
    rows = (fixture_rows(("tcp", "icmp"), streams=1) + fixture_rows(("tcp", "icmp"), streams=4)
            + fixture_rows(("tcp",), mtu=9000, extra={"offloads": "off"}))
    # bench records streams 1 for ping in every run: ping rows of both runs are one setup
    for r in rows:
        if r["protocol"] == "icmp":
            r["streams"] = 1
    df = analysis.with_setup(results.load([write_csv(tmp_path / "r.csv", rows)]))
    tcp = df[df["protocol"] == "tcp"]
    assert tcp["setup"].nunique() == 3
    assert all("streams=" in s for s in tcp["setup"])
    icmp = df[df["protocol"] == "icmp"]
    assert icmp["setup"].nunique() == 1 and "streams" not in icmp["setup"].iloc[0]
    common, own = analysis.setup_labels(analysis.setups(tcp))
    assert "nodes=2" in common and "streams" not in common
    # in column order, numbers numerically: streams, then the underlay MTU
    assert list(own.values()) == ["streams=1, underlay_mtu=1500",
                                  "streams=1, underlay_mtu=9000, offloads=off",
                                  "streams=4, underlay_mtu=1500"]


def test_path_mtu_of_pods_pairs_with_its_underlay(tmp_path: Path) -> None:
    # flannel-vxlan pods have path MTU 1450 on a 1500 underlay and 8950 on a 9000 one; a run
    # sweeping both underlays pairs each pod row with the host-to-host of its own underlay
    rows = []
    for mtu, scale in ((1500, 1.0), (9000, 3.0)):
        for r in fixture_rows(("tcp",), mtu=mtu, scale=scale):
            if r["cni"] == "flannel-vxlan" and r["scenario"] != "host-to-host":
                r["mtu"] = mtu - 50
            r["raw_file"] = f"{r['raw_file']}-{mtu}"
            rows.append(r)
    df = results.load([write_csv(tmp_path / "r.csv", rows)])
    ratios = analysis.tcp_ratios(df)
    assert len(ratios) == 2 * len(TCP_GBPS) * len(REPEATS)  # every row found its baseline
    table = analysis.summary(df)
    assert sorted(table["setup"].str.extract(r"underlay_mtu=(\d+)")[0].unique()) == ["1500", "9000"]
    nine = table[table["setup"].str.contains("underlay_mtu=9000")].set_index(["cni", "scenario"])
    assert nine.loc[("flannel-vxlan", "host-to-host"), "tcp_gbps"] == pytest.approx(3 * 19.0)
    one = table[table["setup"].str.contains("underlay_mtu=1500")].set_index(["cni", "scenario"])
    assert one.loc[("flannel-vxlan", "pod-to-pod-cross-node"), "tcp_ratio_to_host"] == \
        pytest.approx(statistics.median([9.0 / 20.0, 8.8 / 16.0, 4.0 / 19.0]))


def test_paired_normalisation_divides_by_same_run_repeat_and_setup(tmp_path: Path) -> None:
    # a second run whose host-to-host is twice as fast, and a sweep point of the first run
    # with 4 streams and other values: each uses its own baseline
    rows = (fixture_rows(("tcp",)) + fixture_rows(("tcp",), run_id="run-2")
            + fixture_rows(("tcp",), streams=4, scale=1.5))
    for r in rows:
        if r["run_id"] == "run-2" and r["scenario"] == "host-to-host" and r["metric"] == "throughput_bps":
            r["value"] = float(r["value"]) * 2  # type: ignore[arg-type]
    ratios = analysis.tcp_ratios(results.load([write_csv(tmp_path / "r.csv", rows)]))
    assert len(ratios) == 3 * len(TCP_GBPS) * len(REPEATS)
    for r in ratios.itertuples():
        host = TCP_GBPS[(r.cni, "host-to-host")][r.repeat] * (2 if r.run_id == "run-2" else 1)
        own = TCP_GBPS[(r.cni, r.scenario)][r.repeat]
        if r.scenario == "host-to-host":
            own = host
        assert r.ratio == pytest.approx(own / host, rel=1e-12)


def test_summary_ratio_is_the_median_not_the_mean_of_paired_ratios(df: pd.DataFrame) -> None:
    table = analysis.summary(df).set_index(["cni", "scenario"])
    for cni in CNIS:
        for scenario in SCENARIOS:
            paired = [TCP_GBPS[(cni, scenario)][r] / TCP_GBPS[(cni, "host-to-host")][r]
                      for r in REPEATS]
            gbps = TCP_GBPS[(cni, scenario)]
            row = table.loc[(cni, scenario)]
            assert row["tcp_ratio_to_host"] == pytest.approx(statistics.median(paired))
            assert row["tcp_gbps"] == pytest.approx(statistics.median(gbps))
            assert row["tcp_gbps_cv"] == pytest.approx(statistics.stdev(gbps)
                                                       / statistics.mean(gbps))
            assert row["rtt_p50_us"] == pytest.approx(statistics.median(gbps) / 200 * 1000)
            assert row["repeats"] == 3
    skewed = table.loc[("flannel-vxlan", "pod-to-pod-cross-node"), "tcp_ratio_to_host"]
    assert skewed != pytest.approx(statistics.mean(
        [9.0 / 20.0, 8.8 / 16.0, 4.0 / 19.0]), rel=1e-3)  # the fixture does tell them apart
    assert list(table.index.get_level_values("cni").unique()) == ["flannel-vxlan", "calico-bgp"]


def test_stats_ci_is_a_seeded_bootstrap_of_the_median() -> None:
    values = [10.0, 11.0, 9.5, 10.4, 30.0, 10.2, 9.9]
    st = analysis.stats(values)
    assert st == analysis.stats(list(reversed(values)))  # fixed seed, order-free
    assert st["n"] == 7 and st["median"] == 10.2
    assert min(values) <= st["ci_low"] <= st["median"] <= st["ci_high"] <= max(values)
    assert st["ci_high"] < 30.0  # the outlier does not set the interval of a median
    rng = np.random.default_rng(analysis.SEED)
    boot = np.median(np.sort(values)[rng.integers(0, 7, size=(analysis.RESAMPLES, 7))], axis=1)
    assert st["ci_low"] == pytest.approx(np.percentile(boot, 2.5))
    assert st["cv"] == pytest.approx(statistics.stdev(values) / statistics.mean(values))
    one = analysis.stats([5.0])
    assert one["median"] == 5.0 and np.isnan(one["ci_low"]) and np.isnan(one["cv"])


def test_noisy_names_each_statistic_over_the_margin(df: pd.DataFrame) -> None:
    lines = analysis.noisy(analysis.describe(df), 0.05)
    noisy = "flannel-vxlan pod-to-pod-cross-node tcp ratio_to_host"
    assert any(noisy in line for line in lines)
    assert not any("calico-bgp pod-to-pod-cross-node tcp throughput_bps" in line
                   for line in lines)  # 17.5, 18.7, 18.1: CV 3.3%
    assert all(line.startswith("CV ") and "\n" not in line for line in lines)
    assert len(analysis.noisy(analysis.describe(df), 10.0)) == 0


def test_one_csv_given_twice_is_an_error(df: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="more than once"):
        analysis.summary(pd.concat([df, df]))


def test_verdict_tiers_do_not_rank_what_three_noisy_rounds_cannot_tell(df: pd.DataFrame) -> None:
    """calico-bgp's ratios (0.92, 0.85, 0.91) beat flannel-vxlan's (0.45, 0.55, 0.21) in every
    round, but by 1.5x to 4.3x: three rounds that spread cannot clear the test."""
    tiers = verdict.verdict(df)
    ratio = tiers[tiers["metric"] == "tcp_ratio_to_host"]
    assert list(ratio["cni"]) == ["calico-bgp", "flannel-vxlan"]  # by estimate
    assert list(ratio["tier"]) == ["a", "a"]
    assert "rank" not in tiers.columns
    (pair,) = verdict.pairs(df).itertuples()
    assert pair.decision == "undecided" and pair.rounds == 3 and pair.p > verdict.ALPHA


# --- charts and tables -------------------------------------------------------------------

def test_plot_all_writes_every_chart_the_rows_allow(df: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    written = plots.plot_all(df, out)
    stems = ("tcp_throughput_normalised", "tcp_throughput", "verdict", "rtt", "udp")
    expected = {out / f"{s}.{e}" for s in stems for e in ("png", "svg")}
    assert set(written) == expected | {out / n for n in (
        "summary.csv", "summary.md", "verdict.csv", "pairs.csv")}
    for stem in stems:
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["cni"]) == set(CNIS)
    assert {"tcp_ratio_to_host_ci_low", "tcp_ratio_to_host_cv"} <= set(summary.columns)


def test_rr_and_cpu_charts_appear_only_with_their_metrics(tmp_path: Path) -> None:
    rows = fixture_rows(("tcp", "tcp_rr"))
    rows += [dict(r, metric="cpu_s_per_gbit", value=float(r["value"]) / 1e10, unit="s/Gbit")  # type: ignore[arg-type]
             for r in rows if r["metric"] == "throughput_bps"]
    df = results.load([write_csv(tmp_path / "r.csv", rows)])
    written = {p.name for p in plots.plot_all(df, tmp_path / "plots")}
    assert {"rr_latency.png", "cpu_per_gbit.png"} <= written
    fig = plots.figure(df, "rr_latency")
    assert fig is not None and len(fig.axes) == 1
    table = analysis.summary(df).set_index(["cni", "scenario"])
    assert table.loc[("calico-bgp", "host-to-host"), "rr_p99_us"] == pytest.approx(
        statistics.median(300 / g * 10 for g in TCP_GBPS[("calico-bgp", "host-to-host")]))
    assert "cpu_s_per_gbit" in table.columns
    assert plots.figure(results.load([write_csv(tmp_path / "t.csv", fixture_rows(("tcp",)))]),
                        "rr_latency") is None


def test_several_setups_are_faceted_never_mixed(tmp_path: Path) -> None:
    rows = fixture_rows(("tcp",), streams=1) + fixture_rows(("tcp",), streams=4, scale=2.0)
    df = results.load([write_csv(tmp_path / "r.csv", rows)])
    fig = plots.figure(df, "tcp_throughput")
    assert fig is not None
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["streams=1", "streams=4"]
    heights = [sorted(round(b.get_height(), 3) for b in ax.patches if isinstance(b, Rectangle))
               for ax in fig.axes]
    assert heights[1] == [round(2 * h, 3) for h in heights[0]]  # each panel its own setup
    md = plots.summary_markdown(df)
    assert md.count("### streams=") == 2
    assert len(analysis.summary(df)) == 2 * len(TCP_GBPS)
    sweep = plots.sweep(df, "streams", metric="throughput_bps", factor=1e-9)
    assert sweep is not None and len(sweep.axes[0].lines) >= len(CNIS)


def test_plot_all_removes_outputs_an_earlier_run_left(df: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    out.mkdir()
    (out / "published_comparison.md").write_text("old")
    (out / "notes.txt").write_text("mine")
    plots.plot_all(df, out)
    assert (out / "rtt.png").exists() and not (out / "published_comparison.md").exists()
    tcp_only = df[df["protocol"] == "tcp"]
    written = {p.name for p in plots.plot_all(tcp_only, out)}
    left = {p.name for p in out.iterdir()}
    assert left == written | {"notes.txt"}  # not k8stopo's: kept
    assert "rtt.png" not in left and "udp.svg" not in left


def test_summary_markdown_shows_median_ci_cv_and_setup(df: pd.DataFrame) -> None:
    md = plots.summary_markdown(df)
    lines = md.splitlines()
    head = lines[0]
    assert "kernel 6.1.0-synthetic" in head and RUN in head
    assert "2026-11-25T00:00:00Z to 2026-11-25T00:02:00Z" in head
    assert "nodes=2" in head and "duration_s=10" in head and "repeats 3" in head
    table = [line for line in lines if line.startswith("|")]
    columns, rule, *body = table
    assert "TCP Gbit/s CV" in columns and columns.count("|") == rule.count("|")
    assert len(body) == len(CNIS) * len(SCENARIOS)
    (row,) = [line for line in body if line.startswith("| calico-bgp | pod-to-pod-cross-node |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert re.fullmatch(r"18\.10 \[1\d\.\d\d–1\d\.\d\d\]", cells[2])
    assert cells[3].endswith("%")
    assert "Noise: " in md and "flannel-vxlan pod-to-pod-cross-node" in md
    section = md[md.index("Verdict"):md.index("Noise: ")]
    first, second = [line for line in section.splitlines() if line.startswith("- tier ")][:2]
    assert first.startswith("- tier a: calico-bgp: 0.891 [") and "classic: tier 1, BGP" in first
    assert second.startswith("- tier a: flannel-vxlan: 0.") and "3 rounds" in second
    assert "margin ±5%" in section and "ttest_rel" in section and "1 undecided" in section


@pytest.mark.skipif(importlib.util.find_spec("mininet") is None, reason="the CLI needs Mininet")
def test_plot_command_draws_and_refuses(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "r.csv", fixture_rows())

    def k8stopo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "k8stopo", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=300)

    done = k8stopo("plot", str(csv_path), "--out", str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p" / "verdict.png").is_file()
    assert (tmp_path / "p" / "published_comparison.md").is_file()  # the shipped figures
    assert "CV " not in done.stderr  # the noise detail is in summary.md, not the terminal
    done = k8stopo("plot", str(csv_path), "--out", str(tmp_path / "q"), "--no-published")
    assert done.returncode == 0 and not (tmp_path / "q" / "published_comparison.md").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    done = k8stopo("plot", str(bad), "--out", str(tmp_path / "q"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_summary_puts_ping_beside_each_streams_setup_and_keeps_old_rows_apart(
        tmp_path: Path) -> None:
    rows = fixture_rows(("tcp", "icmp"), streams=1) + fixture_rows(("tcp",), streams=4)
    old = fixture_rows(("tcp",), run_id="old")  # an older CSV: no offloads column
    new = fixture_rows(("tcp",), run_id="new", extra={"offloads": "off"}, scale=0.5)
    df = results.load([write_csv(tmp_path / "a.csv", rows), write_csv(tmp_path / "b.csv", old),
                       write_csv(tmp_path / "c.csv", new)])
    table = analysis.summary(df)
    by_setup = {str(s): part for s, part in table.groupby("setup")}
    assert len(by_setup) == 3  # streams=1 (old rows too), streams=4, offloads=off
    (off,) = [s for s in by_setup if "offloads=off" in s]
    assert by_setup[off]["rtt_p50_us"].isna().all()  # no ping was measured with offloads off
    for setup, part in by_setup.items():
        assert len(part) == len(TCP_GBPS)  # one row per cni × scenario: nothing merged
        if setup != off:
            assert part["rtt_p50_us"].notna().all()
    half = by_setup[off].set_index(["cni", "scenario"]).loc[("calico-bgp", "host-to-host"),
                                                            "tcp_gbps"]
    assert half == pytest.approx(20.0 / 2)


def test_scale_figure_draws_a_line_per_mode_and_marks_failed_clusters(tmp_path: Path) -> None:
    """Each BGP mode is its own line through its sizes' values; a cluster that failed is a
    cross on the bring-up panel's axis, never a value on a line."""
    df = results.load([write_csv(tmp_path / "s.csv", scale_rows(
        {(10, "mesh"): 2.0, (100, "mesh"): 8.0, (300, "mesh"): None,
         (10, "rr1"): 2.5, (100, "rr1"): 4.0, (300, "rr1"): 16.0}))])
    fig = plots.scale_figure(df)
    assert fig is not None
    bring_up, converge = fig.axes[:2]
    lines = {line.get_label(): list(zip(np.asarray(line.get_xdata()),
                                        np.asarray(line.get_ydata())))
             for line in bring_up.get_lines()}
    assert lines["build (mesh, 0 pods/node)"] == [(10, 2.0), (100, 8.0)]
    assert lines["build (rr1, 0 pods/node)"] == [(10, 2.5), (100, 4.0), (300, 16.0)]
    crosses = [c for c in bring_up.collections if c.get_label() == "failed (mesh, 0 pods/node)"]
    assert len(crosses) == 1 and np.asarray(crosses[0].get_offsets()).tolist() == [[300.0, 0.0]]
    assert {line.get_label() for line in converge.get_lines()} == {
        "converge (mesh, 0 pods/node)", "converge (rr1, 0 pods/node)"}
    assert plots.scale_figure(results.load([write_csv(tmp_path / "b.csv", fixture_rows())])) \
        is None
