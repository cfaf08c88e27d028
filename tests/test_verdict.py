"""The verdict's statistics on SYNTHETIC rounds with known answers (k8stopo.verdict), the files
``plot`` writes from them, and the budget loop's choice of rounds on a fake measurer.

Every value here is drawn from a seeded generator around a ratio the test chose: they are
inputs with a known truth, not measurements.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from k8stopo import bench, plots, results, verdict
from k8stopo.spec import BenchSpec

from synthetic import Sample, context, write_csv

RUN = "20261204T000000Z-0000"
HOST_GBPS = 20.0
KERNEL = {"calico-bgp": 0.95, "flannel-host-gw": 0.95, "calico-ipip": 0.85,
          "flannel-vxlan": 0.85, "calico-vxlan": 0.8, "weave-fastdp": 0.8,
          "docker-overlay": 0.75, "macvlan": 1.0}
USER = {"flannel-udp": 0.03, "weave-sleeve": 0.03}


def rows_for(truth: dict[str, float], rounds: range, noise: float, seed: int,
             drift: float = 0.15, run: str = RUN) -> list[dict[str, object]]:
    """Host-to-host and cross-node TCP rows (with CPU per Gbit) of each round: the host
    throughput drifts per round and variant (cancelled by the pairing); the ratio is the
    truth times log-normal noise of SD ``noise``."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, object]] = []
    for r in rounds:
        for cni, ratio in truth.items():
            host = HOST_GBPS * float(np.exp(rng.normal(0, drift)))
            cross = host * ratio * float(np.exp(rng.normal(0, noise)))
            cpu = 0.07 / ratio * float(np.exp(rng.normal(0, noise)))
            for scenario, gbps in (("host-to-host", host), ("pod-to-pod-cross-node", cross)):
                samples = [Sample("throughput_bps", gbps * 1e9, "bit/s")]
                if scenario != "host-to-host":
                    samples.append(Sample("cpu_s_per_gbit", cpu, "s/Gbit"))
                out += results.rows(context(cni, scenario, "tcp", r, run), f"2026-12-04T00:{r % 60:02d}:00Z",
                                    samples)
    return out


def frame(tmp_path: Path, truth: dict[str, float], n: int, noise: float, seed: int = 1
          ) -> pd.DataFrame:
    path = tmp_path / f"r{seed}-{n}-{noise}.csv"
    path.unlink(missing_ok=True)  # the sink appends: one frame, one file
    return results.load([write_csv(path, rows_for(truth, range(n), noise, seed))])


def decision(table: pd.DataFrame, a: str, b: str, metric: str = "tcp_ratio_to_host") -> str:
    """The decision about ``a`` against ``b``, whichever of them the table lists first."""
    mine = table[table["metric"] == metric]
    row = mine[(mine["a"] == a) & (mine["b"] == b)]
    if len(row) == 1:
        return str(row["decision"].iloc[0])
    row = mine[(mine["a"] == b) & (mine["b"] == a)]
    assert len(row) == 1
    flip = {"faster": "slower", "slower": "faster"}
    got = str(row["decision"].iloc[0])
    return flip.get(got, got)


def assert_tiers_follow_decisions(pairs: pd.DataFrame, tiers: pd.DataFrame) -> None:
    """Two variants share a letter exactly when the tests did not order them (the letters
    are not a ranking: which way a pair was decided is in pairs.csv only)."""
    for (metric, setup), mine in tiers.groupby(["metric", "setup"]):
        letters = dict(zip(mine["cni"], mine["tier"]))
        got = pairs[(pairs["metric"] == metric) & (pairs["setup"] == setup)]
        apart = {frozenset((r.a, r.b)) for r in got.itertuples()
                 if r.decision in ("faster", "slower")}
        for x, y in itertools.combinations(letters, 2):
            if letters[x] and letters[y]:
                shared = bool(set(letters[x]) & set(letters[y]))
                assert shared != (frozenset((x, y)) in apart), \
                    f"{x} ({letters[x]}) and {y} ({letters[y]})"


def test_a_tie_is_never_ordered(tmp_path: Path) -> None:
    truth = {"calico-bgp": 0.9, "flannel-host-gw": 0.9}
    for seed, n in itertools.product(range(6), (3, 8, 20)):
        df = frame(tmp_path, truth, n, noise=0.1, seed=seed)
        table = verdict.pairs(df)
        assert set(table["decision"]) <= {"equivalent", "undecided"}
        assert set(verdict.verdict(df, pair_table=table)["tier"]) == {"a"}
    quiet = verdict.pairs(frame(tmp_path, truth, 12, noise=0.01, seed=7))
    assert decision(quiet, "calico-bgp", "flannel-host-gw") == "equivalent"


def test_a_consistent_ten_percent_gap_resolves_with_enough_rounds(tmp_path: Path) -> None:
    truth = {"calico-bgp": 0.9, "flannel-vxlan": 0.9 / 1.1}
    few = verdict.pairs(frame(tmp_path, truth, 3, noise=0.03, seed=3))
    many = verdict.pairs(frame(tmp_path, truth, 16, noise=0.03, seed=3))
    assert decision(few, "flannel-vxlan", "calico-bgp") in ("slower", "undecided")
    assert decision(many, "flannel-vxlan", "calico-bgp") == "slower"
    assert decision(many, "flannel-vxlan", "calico-bgp", "cpu_s_per_gbit") == "slower"
    tiers = verdict.verdict(frame(tmp_path, truth, 16, noise=0.03, seed=3))
    ratio = tiers[tiers["metric"] == "tcp_ratio_to_host"].set_index("cni")
    assert ratio.loc["calico-bgp", "tier"] == "a" and ratio.loc["flannel-vxlan", "tier"] == "b"
    assert ratio.loc["calico-bgp", "rounds"] == 16


def test_a_noisy_three_percent_gap_is_not_ordered_beyond_the_error_rate(tmp_path: Path) -> None:
    """A 3% gap is inside the 5% margin: an order is a false claim, which the minimum-effect
    test makes in at most alpha of the runs (over 40 seeds and 3 round counts, both metrics)."""
    truth = {"calico-bgp": 0.9, "calico-ipip": 0.9 / 1.03}
    claims = pd.concat([verdict.pairs(frame(tmp_path, truth, n, noise=0.12, seed=seed))
                        for seed, n in itertools.product(range(40), (3, 8, 20))])
    ordered = claims["decision"].isin(["faster", "slower"])
    assert ordered.mean() <= verdict.ALPHA


def test_user_space_thirty_times_slower_resolves_at_three_rounds(tmp_path: Path) -> None:
    df = frame(tmp_path, {**KERNEL, **USER}, 3, noise=0.1, seed=11)
    table = verdict.pairs(df)
    assert len(table) == 2 * 45  # two metrics, ten variants
    for metric in verdict.DEFAULT_METRICS:
        for kernel, user in itertools.product(KERNEL, USER):
            got = table[(table["metric"] == metric) & (table["a"].isin([kernel, user]))
                        & (table["b"].isin([kernel, user]))]
            assert len(got) == 1
            row = got.iloc[0]
            kernel_better = "faster" if row["a"] == kernel else "slower"
            assert row["decision"] == kernel_better, (metric, kernel, user)
    tiers = verdict.verdict(df, pair_table=table)
    assert_tiers_follow_decisions(table, tiers)
    ratio = tiers[tiers["metric"] == "tcp_ratio_to_host"].set_index("cni")["tier"]
    assert min(ratio[list(USER)]) > max(ratio[list(KERNEL)])


def test_holm_adjusts_across_the_pairs(tmp_path: Path) -> None:
    assert list(verdict.holm([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    table = verdict.pairs(frame(tmp_path, {**KERNEL, **USER}, 5, noise=0.1, seed=2))
    for _, family in table.groupby(["metric", "setup"]):
        assert list(family["p_adjusted"]) == pytest.approx(list(verdict.holm(family["p"])))
        assert (family["p_adjusted"] >= family["p"]).all()
        decided = family[family["decision"] != "undecided"]
        assert (decided["p_adjusted"] < verdict.ALPHA).all()
        # one pair alone would pass at alpha; it is the correction that holds some back
    assert (table["p"] < verdict.ALPHA).sum() >= (table["p_adjusted"] < verdict.ALPHA).sum()


def test_intervals_agree_with_decisions(tmp_path: Path) -> None:
    table = verdict.pairs(frame(tmp_path, {**KERNEL, **USER}, 8, noise=0.05, seed=5))
    upper, lower = 1 + verdict.MARGIN, 1 / (1 + verdict.MARGIN)
    for r in table.itertuples():
        higher = r.metric == "tcp_ratio_to_host"
        if r.decision == "equivalent":
            assert lower < r.ci_low and r.ci_high < upper
        elif r.decision in ("faster", "slower"):
            above = (r.decision == "faster") == higher
            assert (r.ci_low > upper) if above else (r.ci_high < lower)


@pytest.mark.parametrize("seed", range(4))
def test_tiers_never_contradict_decisions(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = {c: float(rng.uniform(0.6, 1.0)) for c in KERNEL} | USER
    df = frame(tmp_path, truth, int(rng.integers(3, 12)), noise=0.08, seed=seed)
    table = verdict.pairs(df)
    assert_tiers_follow_decisions(table, verdict.verdict(df, pair_table=table))


def test_tiers_are_a_compact_letter_display_of_the_decisions() -> None:
    order = ["a1", "a2", "b1", "c1"]
    better = {("a1", "b1"), ("a1", "c1"), ("a2", "b1"), ("a2", "c1"), ("b1", "c1")}
    assert verdict.tiers(order, better) == {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}
    # a2 undecided against c1: they share a letter, and nothing else changes
    assert verdict.tiers(order, better - {("a2", "c1")}) == {
        "a1": "a", "a2": "ac", "b1": "b", "c1": "c"}
    assert set(verdict.tiers(order, set()).values()) == {"a"}


def test_plot_writes_pairs_and_verdict_csv(tmp_path: Path) -> None:
    df = frame(tmp_path, {**KERNEL, **USER}, 4, noise=0.05, seed=9)
    out = tmp_path / "plots"
    written = {p.name for p in plots.plot_all(df, out)}
    assert {"pairs.csv", "verdict.csv", "verdict.png"} <= written
    pairs = pd.read_csv(out / "pairs.csv")
    assert list(pairs.columns) == verdict.PAIR_COLUMNS
    assert set(pairs["decision"]) <= set(verdict.DECISIONS)
    assert (pairs["rounds"] == 4).all() and (pairs["margin"] == verdict.MARGIN).all()
    assert (pairs["test"] == verdict.TEST).all()
    row = pairs[(pairs["metric"] == "tcp_ratio_to_host") & (pairs["a"] == "flannel-vxlan")
                & (pairs["b"] == "flannel-udp")].iloc[0]
    assert row["decision"] == "faster" and row["effect"] == pytest.approx(0.85 / 0.03, rel=0.2)
    tiers = pd.read_csv(out / "verdict.csv", keep_default_na=False)
    assert list(tiers.columns) == verdict.VERDICT_COLUMNS
    ratio = tiers[tiers["metric"] == "tcp_ratio_to_host"]
    assert len(ratio) == 10 and (ratio["rounds"] == 4).all()
    assert list(ratio["estimate"]) == sorted(ratio["estimate"], reverse=True)
    assert (ratio["ci_low"] <= ratio["estimate"]).all()
    assert ratio.set_index("cni").loc["weave-sleeve", "tier"] != "a"
    md = (out / "summary.md").read_text()
    assert "tiers from paired tests" in md and "margin ±5%" in md and "rounds 4" in md
    assert "1." not in md.split("Verdict")[1].split("\n")[0]  # no ranks
    lines = plots.closing_lines(df, out)
    assert len(lines) == 2 and "pairs resolved" in lines[0] and "undecided" in lines[0]


def test_each_runs_own_tiers_are_compared_when_several_runs_are_plotted(tmp_path: Path
                                                                        ) -> None:
    """Three runs of one experiment: user space is tier b in each (identical), a tie between
    two kernel variants stays one tier in each; a variant missing from one run is not
    counted as identical."""
    truth = {"calico-bgp": 0.9, "flannel-host-gw": 0.9, "flannel-udp": 0.03}
    rows = [row for i in range(3)
            for row in rows_for(truth if i < 2 else {k: v for k, v in truth.items()
                                                     if k != "flannel-host-gw"},
                                range(6), 0.05, seed=20 + i, run=f"20261204T00000{i}Z-000{i}")]
    df = results.load([write_csv(tmp_path / "three.csv", rows)])
    written = {p.name for p in plots.plot_all(df, tmp_path / "plots")}
    assert plots.AGREEMENT_NAME in written
    table = pd.read_csv(tmp_path / "plots" / plots.AGREEMENT_NAME, keep_default_na=False)
    ratio = table[table["metric"] == "tcp_ratio_to_host"].set_index("cni")
    assert (ratio["runs"] == 3).all()
    assert ratio.loc["flannel-udp", "tiers"] == "b b b"
    assert bool(ratio.loc["flannel-udp", "identical"]) is True
    assert ratio.loc["calico-bgp", "tiers"] == "a a a"
    assert ratio.loc["flannel-host-gw", "tiers"] == "a a -"
    assert bool(ratio.loc["flannel-host-gw", "identical"]) is False
    one = {p.name for p in plots.plot_all(df[df["run_id"] == df["run_id"].iloc[0]],
                                          tmp_path / "plots")}
    assert plots.AGREEMENT_NAME not in one  # one run: nothing to compare (stale file removed)
    assert not (tmp_path / "plots" / plots.AGREEMENT_NAME).exists()


def test_separation_prefers_the_metric_with_less_noise(tmp_path: Path) -> None:
    rows = rows_for({**KERNEL, **USER}, range(6), noise=0.1, seed=4)
    df = results.load([write_csv(tmp_path / "s.csv", rows)])
    table = verdict.separation(df, "s.csv")
    assert set(table["metric"]) == {"tcp_ratio_to_host", "cpu_s_per_gbit"}
    assert (table["rounds"] == 6).all() and (table["separation_all"] > table[
        "separation_kernel"]).all()
    paths = verdict.write_separation([tmp_path / "s.csv"], tmp_path / "m")
    assert pd.read_csv(paths[0])["metric"].tolist() == table["metric"].tolist()
    assert "| tcp_ratio_to_host |" in paths[1].read_text()


# --- the budget loop, on a fake measurer ---------------------------------------------------

class FakeBench:
    """Measures a verdict round by drawing rows from the truth; each measurement takes 2
    fake seconds."""

    def __init__(self, tmp_path: Path, truth: dict[str, float], base: int) -> None:
        self.truth, self.now = truth, 0.0
        self.rounds: list[list[bench.Step]] = []
        self.path = write_csv(tmp_path / "run.csv", rows_for(truth, range(base), 0.05, 0))

    def rows(self) -> pd.DataFrame:
        return results.load([self.path])

    def measure(self, steps: list[bench.Step]) -> None:
        self.rounds.append(steps)
        repeat = steps[0].repeat
        assert {s.repeat for s in steps} == {repeat}
        cnis = list(dict.fromkeys(s.cni for s in steps))
        fresh = rows_for({c: self.truth[c] for c in cnis}, range(repeat, repeat + 1), 0.05,
                         repeat)
        with results.CsvSink(self.path) as sink:
            sink.write(fresh)
        self.now += 2.0 * len(steps)


def spec_of(cnis: tuple[str, ...]) -> BenchSpec:
    return BenchSpec(cnis=cnis, scenarios=("host-to-host", "pod-to-pod-cross-node"),
                     protocols=("tcp",), repeat=3)


def test_budget_rounds_measure_only_undecided_pairs(tmp_path: Path) -> None:
    truth = {"calico-bgp": 0.95, "flannel-vxlan": 0.95 / 1.12, "flannel-udp": 0.03}
    fake = FakeBench(tmp_path, truth, 3)
    progress: list[tuple[int, int]] = []
    ran = bench.settle(spec_of(tuple(truth)), list(truth), fake.rows, fake.measure,
                       bench.Clock(10_000.0, lambda: fake.now), 2.0, "seed",
                       lambda d, t: progress.append((d, t)))
    assert ran == len(fake.rounds) >= 1
    first = fake.rounds[0]
    # user space is settled at 3 rounds: only the close pair is measured again, host first
    assert {s.cni for s in first} == {"calico-bgp", "flannel-vxlan"}
    assert [(s.scenario, s.protocol) for s in first[:2]] == [
        ("host-to-host", "tcp"), ("pod-to-pod-cross-node", "tcp")]
    assert [r[0].repeat for r in fake.rounds] == list(range(3, 3 + ran))  # repeat goes on
    assert progress[-1][1] == 2 * 3  # two metrics, three pairs
    assert progress[-1][0] == 6  # it stopped because everything was decided
    table = verdict.pairs(fake.rows())
    assert decision(table, "calico-bgp", "flannel-vxlan") == "faster"


def test_budget_stops_when_a_round_does_not_fit(tmp_path: Path) -> None:
    truth = {"calico-bgp": 0.95, "flannel-vxlan": 0.95 / 1.12, "flannel-udp": 0.03}
    fake = FakeBench(tmp_path, truth, 3)
    # a round of 4 measurements at 2 s each needs 8 s: 7 s left buys none
    assert bench.settle(spec_of(tuple(truth)), list(truth), fake.rows, fake.measure,
                        bench.Clock(7.0, lambda: fake.now), 2.0, "seed") == 0
    assert fake.rounds == []


def test_budget_stops_when_nothing_can_be_settled(tmp_path: Path) -> None:
    # a gap right at the margin: no affordable number of rounds decides it
    truth = {"calico-bgp": 0.95, "flannel-vxlan": 0.95 / 1.05}
    fake = FakeBench(tmp_path, truth, 3)
    fake.path.unlink()
    write_csv(fake.path, rows_for(truth, range(3), 0.3, 0))
    assert bench.settle(spec_of(tuple(truth)), list(truth), fake.rows, fake.measure,
                        bench.Clock(12.0, lambda: fake.now), 2.0, "seed") == 0


def test_budget_parses_durations() -> None:
    assert [bench.parse_budget(t) for t in ("8m", "90s", "90", "0", "1h")] == [
        480, 90, 90, 0, 3600]
    with pytest.raises(bench.SpecError, match="--budget"):
        bench.parse_budget("soon")
