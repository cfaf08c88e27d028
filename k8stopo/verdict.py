"""Which variants a run can tell apart: paired tests per pair, tiers, and what more rounds would settle.

The comparison is per setup, on ``pod-to-pod-cross-node``, one metric at a time (:data:`METRICS`;
the verdict uses :data:`DEFAULT_METRICS`). A *round* is one repeat of one run: within it every
variant was measured minutes apart on its own cluster, interleaved with the others, so two
variants are compared **paired by round** (the machine's drift is shared within a round). The
TCP ratio is already paired inside the round (each variant's cross-node TCP over its own
host-to-host TCP of the same round, :func:`k8stopo.analysis.tcp_ratios`).

The test, and why this one. Two variants are compared on the per-round difference of the *logs*
of their values (a ratio, symmetric: 30x and 1/30x are equally far), with
:func:`scipy.stats.ttest_rel`:

- *faster* (a better than b): a one-sided paired t-test that the ratio exceeds ``1 + margin``
  (a minimum-effect test: practically *and* statistically significant);
- *slower*: the mirror image;
- *equivalent*: TOST, two one-sided paired t-tests that the ratio lies inside
  ``[1/(1 + margin), 1 + margin]``;
- otherwise *undecided*.

The three claims partition the possible ratios, so only one can be true; each pair's p is the
smallest of the three and its decision that claim's. Holm's step-down correction runs across
all pairs of one setup and metric (45 for ten variants); a claim stands when its Holm-adjusted
p is below ``alpha``. The interval reported is the paired t interval at the level Holm used for
that pair (``1 - 2 alpha / (m - k)``), so a *faster* pair's interval always clears the margin
and an *equivalent* pair's lies inside it.

Why not Wilcoxon or a bootstrap: the exact signed-rank test's smallest two-sided p with n
rounds is 2/2**n, so with Holm over 45 pairs it cannot decide anything below 11 rounds, and a
bootstrap of 3 values is anti-conservative (its distribution has 10 points). The t-test on
logs assumes roughly normal per-round log differences; with 3 rounds it still resolves a 30x
gap (user-space vs kernel) and, with more rounds, a consistent 10% gap, which is what the
budget loop of ``bench`` buys (:func:`next_round`).

Tiers: a compact letter display of the decisions (Piepho's insert-and-absorb): two variants
share a letter exactly when the tests did not order them, so two variants with no letter in
common were decided apart (the better estimate, the geometric mean of a variant's per-round
values, being the better one), and nothing else is. Letters go to groups best first, so ``a``
is the best group; a variant with two letters sits between two groups the tests could not
separate it from. A variant with fewer than two rounds has no letter.
"""
from __future__ import annotations

import itertools
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import analysis
from .analysis import CROSS_NODE

MARGIN = 0.05
ALPHA = 0.05
CONFIDENCE = 0.95  # of a variant's own estimate in verdict.csv
TEST = "paired t-test on log values (scipy.stats.ttest_rel), TOST for equivalence, Holm"
DECISIONS = ("faster", "slower", "equivalent", "undecided")
PAIR_COLUMNS = ["setup", "scenario", "metric", "a", "b", "decision", "effect", "ci_low",
                "ci_high", "p", "p_adjusted", "test", "rounds", "margin"]
VERDICT_COLUMNS = ["setup", "cni", "scenario", "metric", "tier", "estimate", "ci_low",
                   "ci_high", "rounds"]
#: user-space datapaths (a packet crosses a daemon twice): the kernel-only view leaves them out
USER_SPACE = frozenset({"flannel-udp", "weave-sleeve"})


@dataclass(frozen=True)
class Metric:
    """A candidate verdict metric: which rows, and which way is better."""

    name: str
    protocol: str
    metric: str
    higher_is_better: bool
    label: str


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("tcp_ratio_to_host", "tcp", "ratio_to_host", True,
           "cross-node TCP throughput / host-to-host (paired)"),
    Metric("cpu_s_per_gbit", "tcp", "cpu_s_per_gbit", False, "CPU seconds per Gbit (TCP)"),
    Metric("rr_transactions_per_s", "tcp_rr", "transactions_per_s", True,
           "TCP request/response transactions per second"),
    Metric("rr_p50_us", "tcp_rr", "latency_p50_us", False, "TCP request/response p50 latency"),
    Metric("udp_packets_per_s", "udp", "packets_per_s", True, "UDP packets per second received"),
)}
#: the two metrics that separate datapaths best on this machine (results/metrics/separation.md)
DEFAULT_METRICS = ("tcp_ratio_to_host", "cpu_s_per_gbit")


def rounds(df: pd.DataFrame, metric: Metric, scenario: str = CROSS_NODE) -> pd.DataFrame:
    """One row per setup, run, repeat and cni with the metric's value (positive values only:
    the tests work on logs)."""
    df = analysis.measured(analysis.with_setup(df))
    cols = ["setup", "run_id", "repeat", "cni", "value"]
    if metric.metric == "ratio_to_host":
        has_tcp = ((df["protocol"] == "tcp") & (df["metric"] == "throughput_bps")).any()
        rows = analysis.tcp_ratios(df) if has_tcp else df.iloc[:0].assign(ratio=0.0)
        rows = rows.assign(value=rows["ratio"])
    else:
        rows = analysis.metric_rows(df, metric.protocol, metric.metric)
    rows = rows[(rows["scenario"] == scenario) & (rows["value"] > 0)]
    return rows[cols].reset_index(drop=True)


def _wide(rows: pd.DataFrame) -> pd.DataFrame:
    """Log values, a row per round (run, repeat), a column per variant."""
    logs = rows.assign(value=np.log(rows["value"].astype(float)))
    return logs.pivot_table(index=["run_id", "repeat"], columns="cni", values="value",
                            aggfunc="mean")


@dataclass(frozen=True, eq=False)
class _Pair:
    a: str
    b: str
    la: np.ndarray  # log values of a, paired by round with lb
    lb: np.ndarray

    @property
    def n(self) -> int:
        return len(self.la)

    def p_values(self, delta: float) -> dict[str, float]:
        """p of each claim about log(a/b): above +delta, below -delta, inside."""
        def p(shift: float, side: str) -> float:
            value = float(stats.ttest_rel(self.la + shift, self.lb, alternative=side).pvalue)
            return 1.0 if math.isnan(value) else value
        return {"up": p(-delta, "greater"), "down": p(delta, "less"),
                "inside": max(p(delta, "greater"), p(-delta, "less"))}

    def interval(self, confidence: float) -> tuple[float, float]:
        """Paired t interval of log(a/b) at ``confidence``."""
        ci = stats.ttest_rel(self.la, self.lb).confidence_interval(confidence)
        return float(ci.low), float(ci.high)


def _pairs_of(wide: pd.DataFrame) -> list[_Pair]:
    names = analysis.ordered(wide.columns, analysis.CNI_ORDER)
    out = []
    for a, b in itertools.combinations(names, 2):
        both = wide[[a, b]].dropna()
        out.append(_Pair(a, b, both[a].to_numpy(), both[b].to_numpy()))
    return out


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error at most alpha)."""
    values = np.asarray(p, dtype=float)
    order = np.argsort(values, kind="stable")
    m = len(values)
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * values[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def _decide(pairs: list[_Pair], metric: Metric, margin: float, alpha: float) -> list[dict]:
    """Each pair's claim, Holm-adjusted p, effect and interval (module docstring)."""
    delta = math.log1p(margin)
    testable = [i for i, pr in enumerate(pairs) if pr.n >= 2]
    ps = {i: pairs[i].p_values(delta) for i in testable}
    claim = {i: min(ps[i], key=ps[i].__getitem__) for i in testable}
    best = {i: ps[i][claim[i]] for i in testable}
    adjusted = dict(zip(testable, holm([best[i] for i in testable])))
    # Holm's k-th smallest p is tested at alpha / (m - k): the interval at that level
    rank = {i: k for k, i in enumerate(sorted(testable, key=best.__getitem__))}
    m = len(testable)
    better = {"up": "faster", "down": "slower"} if metric.higher_is_better else {
        "up": "slower", "down": "faster"}
    rows = []
    for i, pr in enumerate(pairs):
        row = {"a": pr.a, "b": pr.b, "rounds": pr.n, "decision": "undecided", "effect": np.nan,
               "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "p_adjusted": np.nan}
        if pr.n >= 1:
            row["effect"] = float(np.exp(np.mean(pr.la - pr.lb)))
        if i in ps:
            low, high = pr.interval(1 - 2 * alpha / (m - rank[i]))
            row.update(ci_low=math.exp(low), ci_high=math.exp(high), p=best[i],
                       p_adjusted=float(adjusted[i]))
            if adjusted[i] < alpha:
                row["decision"] = better.get(claim[i], "equivalent")
        rows.append(row)
    return rows


def _settings(metrics: Sequence[str]) -> list[Metric]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown verdict metric(s) {', '.join(unknown)}; known: "
                         f"{', '.join(METRICS)}")
    return [METRICS[m] for m in metrics]


def _per_setup(df: pd.DataFrame, metrics: Sequence[str]
               ) -> list[tuple[Metric, str, pd.DataFrame]]:
    """(metric, setup, wide log rounds) for each metric and setup with cross-node rows."""
    out = []
    for metric in _settings(metrics):
        rows = rounds(df, metric)
        for setup in dict.fromkeys(rows["setup"]):
            out.append((metric, str(setup), _wide(rows[rows["setup"] == setup])))
    return out


def pairs(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS, margin: float = MARGIN,
          alpha: float = ALPHA) -> pd.DataFrame:
    """pairs.csv: every pair of variants per setup and metric, with its decision."""
    rows = []
    for metric, setup, wide in _per_setup(df, metrics):
        for row in _decide(_pairs_of(wide), metric, margin, alpha):
            rows.append({"setup": setup, "scenario": CROSS_NODE, "metric": metric.name, **row,
                         "test": TEST, "margin": margin})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def tiers(order: Sequence[str], decided_better: set[tuple[str, str]]) -> dict[str, str]:
    """Compact letter display of variants listed best first: each pair decided apart splits
    every letter group holding both (insert), groups inside another are dropped (absorb);
    then groups get letters in order of their worst member, then their best."""
    pos = {name: k for k, name in enumerate(order)}
    groups: list[frozenset[str]] = [frozenset(order)]
    apart = sorted({tuple(sorted(p, key=pos.__getitem__)) for p in decided_better
                    if p[0] in pos and p[1] in pos}, key=lambda p: (pos[p[0]], pos[p[1]]))
    for a, b in apart:
        split = [part for g in groups for part in ((g - {a}, g - {b}) if {a, b} <= g else (g,))]
        groups = [g for k, g in enumerate(split) if g and not any(
            g < other or (g == other and m < k) for m, other in enumerate(split))]
    groups.sort(key=lambda g: (max(pos[n] for n in g), min(pos[n] for n in g)))
    letters = dict.fromkeys(order, "")
    for k, group in enumerate(groups):
        for name in group:
            letters[name] += string.ascii_lowercase[k % 26] * (1 + k // 26)
    return letters


def verdict(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS, margin: float = MARGIN,
            alpha: float = ALPHA, pair_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """verdict.csv: per setup and metric, each variant's estimate (geometric mean of its
    rounds, 95% t interval) and tier, best first."""
    table = pairs(df, metrics, margin, alpha) if pair_table is None else pair_table
    out = []
    for metric, setup, wide in _per_setup(df, metrics):
        mine = table[(table["setup"] == setup) & (table["metric"] == metric.name)]
        better = {(r.a, r.b) if r.decision == "faster" else (r.b, r.a)
                  for r in mine.itertuples() if r.decision in ("faster", "slower")}
        rows = []
        for cni in wide.columns:
            logs = wide[cni].dropna().to_numpy()
            est = float(np.exp(logs.mean())) if len(logs) else np.nan
            low = high = np.nan
            if len(logs) >= 2 and logs.std(ddof=1) > 0:
                ci = stats.ttest_1samp(logs, 0.0).confidence_interval(CONFIDENCE)
                low, high = math.exp(ci.low), math.exp(ci.high)
            elif len(logs) >= 2:
                low = high = est
            rows.append({"setup": setup, "cni": cni, "scenario": CROSS_NODE,
                         "metric": metric.name, "tier": "", "estimate": est, "ci_low": low,
                         "ci_high": high, "rounds": len(logs)})
        rows.sort(key=lambda r: -r["estimate"] if metric.higher_is_better else r["estimate"])
        ranked = [r["cni"] for r in rows if r["rounds"] >= 2]
        letters = tiers(ranked, better)
        for r in rows:
            r["tier"] = letters.get(r["cni"], "")
        out += rows
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


AGREEMENT_COLUMNS = ["setup", "metric", "cni", "runs", "tiers", "identical"]


def agreement(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """Each run's own verdict side by side (rows of several runs of one experiment): per
    setup, metric and variant, the tier every run gave it on its own (``tiers``, in run order,
    "-" where a run has no tier for it) and whether all runs gave the same. A run's letters
    are its own display, so equal letters mean the same grouping only because every run
    letters its groups best first."""
    runs = sorted(df["run_id"].dropna().unique())
    per_run = {r: verdict(df[df["run_id"] == r], metrics) for r in runs}
    keys = sorted({(v.setup, v.metric, v.cni) for t in per_run.values()
                   for v in t.itertuples()})
    rows = []
    for setup, metric, cni in keys:
        got = []
        for r in runs:
            t = per_run[r]
            hit = t[(t["setup"] == setup) & (t["metric"] == metric) & (t["cni"] == cni)]
            got.append(str(hit["tier"].iloc[0]) if len(hit) and hit["tier"].iloc[0] else "-")
        rows.append({"setup": setup, "metric": metric, "cni": cni, "runs": len(runs),
                     "tiers": " ".join(got),
                     "identical": "-" not in got and len(set(got)) == 1})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def tally(pair_table: pd.DataFrame) -> dict[str, int]:
    """How many pairs got each decision."""
    counts = pair_table["decision"].value_counts()
    return {d: int(counts.get(d, 0)) for d in DECISIONS}


# --- rounds until settled (bench --budget) -------------------------------------------------

def _could_settle(pr: _Pair, delta: float, alpha: float, rounds_more: int) -> bool:
    """Whether ``rounds_more`` further rounds with the same spread could decide the pair: the
    projected interval (same mean and standard deviation, more rounds) would fit inside one
    claim's region."""
    n = pr.n
    if n < 2:
        return True
    d = pr.la - pr.lb
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    total = n + rounds_more
    half = float(stats.t.ppf(1 - alpha, total - 1)) * sd / math.sqrt(total)
    return (mean - half > delta or mean + half < -delta
            or (mean - half > -delta and mean + half < delta))


def next_round(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS,
               margin: float = MARGIN, alpha: float = ALPHA, rounds_more: int = 1
               ) -> tuple[list[str], int, int]:
    """(variants to measure in the next round, pairs decided, pairs undecided).

    The variants are those of undecided pairs that ``rounds_more`` further rounds could still
    settle (at Bonferroni's level, a little stricter than Holm); none means stop: everything
    is decided, or what is left sits on the margin and the budget cannot beat its spread.
    """
    delta = math.log1p(margin)
    table = pairs(df, metrics, margin, alpha)
    open_pairs = {(r.setup, r.metric, r.a, r.b) for r in table.itertuples()
                  if r.decision == "undecided"}
    want: set[str] = set()
    for metric, setup, wide in _per_setup(df, metrics):
        candidates = _pairs_of(wide)
        level = alpha / max(len(candidates), 1)
        for pr in candidates:
            if (setup, metric.name, pr.a, pr.b) in open_pairs and _could_settle(
                    pr, delta, level, rounds_more):
                want |= {pr.a, pr.b}
    undecided = len(open_pairs)
    return analysis.ordered(want, analysis.CNI_ORDER), len(table) - undecided, undecided


# --- which metric separates datapaths -----------------------------------------------------

SEPARATION_COLUMNS = ["metric", "source", "setup", "variants", "rounds", "between_sd_all",
                      "between_sd_kernel", "noise_sd", "separation_all", "separation_kernel"]


def separation(df: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """For each candidate metric and setup: the spread of the variants' mean log values
    (between datapaths; all, and kernel datapaths only) over the pooled round-to-round standard
    deviation of a variant's log values (noise). Larger separates better; on logs, so
    a unit-free ratio comparable across metrics."""
    out = []
    for metric in METRICS.values():
        try:
            rows = rounds(df, metric)
        except ValueError:  # mixed units or duplicates: not comparable
            continue
        for setup in dict.fromkeys(rows["setup"]):
            wide = _wide(rows[rows["setup"] == setup])
            counts = wide.notna().sum()
            wide = wide.loc[:, counts >= 2]
            if wide.shape[1] < 2:
                continue
            resid = wide - wide.mean()
            dof = int((wide.notna().sum() - 1).sum())
            noise = float(np.sqrt(np.nansum(resid.to_numpy() ** 2) / dof))
            means = wide.mean()
            kernel = means[[c for c in means.index if c not in USER_SPACE]]
            between_all = float(means.std(ddof=1))
            between_kernel = float(kernel.std(ddof=1)) if len(kernel) >= 2 else np.nan
            out.append({"metric": metric.name, "source": source, "setup": setup,
                        "variants": wide.shape[1], "rounds": int(counts.max()),
                        "between_sd_all": between_all, "between_sd_kernel": between_kernel,
                        "noise_sd": noise,
                        "separation_all": between_all / noise if noise else np.nan,
                        "separation_kernel": between_kernel / noise if noise else np.nan})
    return pd.DataFrame(out, columns=SEPARATION_COLUMNS)


#: a source compares "the datapaths" when it holds at least this many variants
WHOLE_COMPARISON = 8


def separation_markdown(table: pd.DataFrame) -> str:
    """The separation per metric (median over the sources that compare every variant), then
    every source and setup, best kernel separation first."""
    whole = table[table["variants"] >= WHOLE_COMPARISON]
    by_metric = whole.groupby("metric").agg(
        sources=("source", "nunique"), sep_all=("separation_all", "median"),
        sep_kernel=("separation_kernel", "median")).sort_values("sep_kernel", ascending=False)
    lines = ["Separation = SD of the variants' mean log value / pooled round-to-round SD of a "
             "variant's log value (pod-to-pod-cross-node; kernel = without user-space "
             f"{', '.join(sorted(USER_SPACE))}). Larger separates better.", "",
             f"By metric, median over the runs that compare {WHOLE_COMPARISON} or more variants:",
             "", "| metric | runs | separation (all) | separation (kernel) |", "|---|---|---|---|",
             *[f"| {m} | {r.sources} | {r.sep_all:.2f} | {r.sep_kernel:.2f} |"
               for m, r in by_metric.iterrows()],
             "", "Every source and setup:", "",
             "| metric | source | setup | variants | rounds | between (all) | between (kernel) "
             "| noise | separation (all) | separation (kernel) |", "|" + "---|" * 10]
    for r in table.sort_values("separation_kernel", ascending=False).itertuples():
        lines.append(f"| {r.metric} | {r.source} | {r.setup} | {r.variants} | {r.rounds} | "
                     f"{r.between_sd_all:.3f} | {r.between_sd_kernel:.3f} | {r.noise_sd:.3f} | "
                     f"{r.separation_all:.2f} | {r.separation_kernel:.2f} |")
    return "\n".join(lines) + "\n"


def write_separation(csvs: Sequence[Path], out_dir: Path) -> list[Path]:
    """separation.csv and separation.md in ``out_dir`` from results CSVs, one source each."""
    from . import results
    frames = [separation(results.load([Path(p)]), str(p)) for p in csvs]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=SEPARATION_COLUMNS)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "separation.csv", out_dir / "separation.md"]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(separation_markdown(table))
    return paths
