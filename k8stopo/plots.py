"""Charts and a summary table from results CSVs (``k8stopo plot``, ``bench --plots``, notebooks).

Every number drawn or tabulated comes from the rows passed in, through
:mod:`k8stopo.analysis` (setups, pairing, statistics); the only constants here are unit
conversions and colours. A bar is the median over repeats, its whisker the 95% confidence
interval of that median, and a dot marks each repeat.

Setups are never mixed in one bar: when the rows hold several (a streams sweep, runs with
different MTUs), each chart gets one panel per setup, stacked, titled by what differs, and
``summary.md`` one table per setup. A notebook user sees the whole sweep in one figure; to
look at one setup, filter the frame first.

Charts are drawn only when their rows exist, and every run of :func:`plot_all` removes
the known outputs it did not write, so a plots folder never pairs an old chart with a
new summary.
"""
from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import analysis, verdict
from .analysis import BASELINE, CNI_ORDER, KEYS

log = logging.getLogger("k8stopo.plots")

# One hue per project, a shade per variant, so families read together across charts.
CNI_COLORS = {
    "host": "#525252",
    "flannel-vxlan": "#08519c", "flannel-host-gw": "#4292c6", "flannel-udp": "#9ecae1",
    "calico-bgp": "#a63603", "calico-ipip": "#e6550d", "calico-vxlan": "#fdae6b",
    "weave-fastdp": "#006d2c", "weave-sleeve": "#74c476",
    "macvlan": "#6a51a3", "docker-bridge": "#dd3497", "docker-overlay": "#c51b8a",
}
OTHER_COLORS = ("#8c6d31", "#bd9e39", "#843c39", "#7b4173", "#637939")
DOT_COLOR = "#222222"
MARK_COLORS = ("#d62728", "#9467bd")
HOW_TO_READ = "bar = median over repeats, whisker = 95% CI of the median, dot = one repeat"
GBIT = 1e-9
US_PER_MS = 1e3
PUBLISHED_NAME = "published_comparison.md"
AGREEMENT_NAME = "tiers_by_run.csv"  # with rows of several runs: each run's own tiers


def _tick(scenario: str) -> str:
    """'pod-to-pod-same-node' on two lines, so neighbouring long names do not touch."""
    parts = scenario.split("-", 3)
    return scenario if len(parts) < 4 else "-".join(parts[:3]) + "\n" + parts[3]


def _shown(df: pd.DataFrame, protocol: str, metric: str, unit: str | None,
           factor: float) -> pd.DataFrame:
    """The rows of one metric with ``value`` in the unit the charts show."""
    rows = analysis.metric_rows(df, protocol, metric, unit)
    return rows.assign(value=rows["value"] * factor)


def _values(df: pd.DataFrame, column: str) -> str:
    """The distinct values of a column, e.g. "2" or "2, 3"."""
    if column not in df.columns:
        return ""
    return ", ".join(sorted({analysis.fmt_value(v) for v in df[column].dropna()}))


def _colors(cnis: Sequence[str]) -> dict[str, str]:
    others = [c for c in cnis if c not in CNI_COLORS]
    return {c: CNI_COLORS[c] if c in CNI_COLORS
            else OTHER_COLORS[others.index(c) % len(OTHER_COLORS)] for c in cnis}


@dataclass(frozen=True)
class _Layout:
    """Where each cni × scenario bar goes: scenarios in SPEC order along x, and within a
    scenario only the variants measured there, in CNI_ORDER, so no group has holes."""

    x: dict[tuple[str, str], float]
    scenarios: list[str]
    colors: dict[str, str]  # cni -> colour, in legend order
    width: float

    @classmethod
    def of(cls, frames: Iterable[pd.DataFrame]) -> _Layout:
        present = {(str(c), str(s)) for f in frames for c, s in zip(f["cni"], f["scenario"])}
        scenarios = analysis.ordered((s for _, s in present), analysis.SCENARIO_ORDER)
        cnis = analysis.ordered((c for c, _ in present), CNI_ORDER)
        groups = [[c for c in cnis if (c, s) in present] for s in scenarios]
        width = 0.84 / max(len(g) for g in groups)
        x = {(c, s): i + (j - (len(group) - 1) / 2) * width
             for i, (s, group) in enumerate(zip(scenarios, groups)) for j, c in enumerate(group)}
        return cls(x, scenarios, _colors(cnis), width)


@dataclass(frozen=True)
class _Marks:
    """Extra per-bar markers (p99 over a p50 bar): the median of their repeats."""

    rows: pd.DataFrame
    label: str
    marker: str = "D"


@dataclass(frozen=True)
class _Panel:
    """One y axis of a chart: bars of ``rows``, optional markers and a reference line."""

    rows: pd.DataFrame
    ylabel: str
    fmt: str
    marks: list[_Marks] = field(default_factory=list)
    reference: tuple[float, str] | None = None  # (y, legend label)
    log: bool = False  # a log y axis: user-space variants cost ~30x the kernel ones


def _whisker(ax: Axes, x: float, st: dict[str, float], horizontal: bool = False) -> None:
    if np.isnan(st["ci_low"]):
        return
    err = [[st["median"] - st["ci_low"]], [st["ci_high"] - st["median"]]]
    if horizontal:
        ax.errorbar(st["median"], x, xerr=err, fmt="none", ecolor=DOT_COLOR, elinewidth=1,
                    capsize=2, zorder=3)
    else:
        ax.errorbar(x, st["median"], yerr=err, fmt="none", ecolor=DOT_COLOR, elinewidth=1,
                    capsize=2, zorder=3)


def _bars(ax: Axes, rows: pd.DataFrame, layout: _Layout, fmt: str) -> None:
    """Median bar, CI whisker, a dot per repeat, and the median written above."""
    for (cni, scenario), vals in rows.groupby(["cni", "scenario"])["value"]:
        x = layout.x[(str(cni), str(scenario))]
        st = analysis.stats(vals)
        ax.bar(x, st["median"], layout.width * 0.92, color=layout.colors[str(cni)], zorder=2)
        _whisker(ax, x, st)
        n = len(vals)
        offsets = [(i - (n - 1) / 2) * layout.width * 0.5 / max(n - 1, 1) for i in range(n)]
        ax.scatter([x + o for o in offsets], sorted(vals), s=9, color=DOT_COLOR, zorder=4,
                   linewidths=0)
        top = np.nanmax([vals.max(), st["ci_high"]])
        ax.annotate(fmt.format(st["median"]), (x, top), xytext=(0, 4),
                    textcoords="offset points", rotation=90, ha="center", va="bottom",
                    fontsize=7)


def _axes_style(ax: Axes, layout: _Layout) -> None:
    ax.set_xticks(range(len(layout.scenarios)), [_tick(s) for s in layout.scenarios])
    ax.set_xlim(-0.5, len(layout.scenarios) - 0.5)
    ax.margins(y=0.22)  # room for the written medians; bars keep y=0 as the floor
    ax.grid(axis="y", color="#dddddd", zorder=0)
    ax.set_axisbelow(True)


def _repeat_span(rows: pd.DataFrame) -> str:
    counts = analysis.measured(rows).groupby(KEYS + ["protocol", "metric"]).size()
    lo, hi = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _context(rows: pd.DataFrame, common: str) -> str:
    """Where, with what and how it was measured: common setup, environment, repeats."""
    env = [f"{col} {_values(rows, col)}" for col in sorted(analysis.ENVIRONMENT)
           if col in rows.columns and col != "command" and rows[col].notna().any()]
    return " · ".join(p for p in [common, *env, f"repeats {_repeat_span(rows)}"] if p)


def _new_figure(n_axes: int, width: float, title: str, subtitle: str,
                height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, 1.3 + height * n_axes), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(n_axes, 1, squeeze=False)[:, 0])
    wrap = int(width * 11)  # characters of a 9.5 pt line across the figure
    fig.suptitle(title + "\n" + "\n".join(textwrap.wrap(subtitle, wrap)), fontsize=9.5)
    return fig, axes


def _legend(fig: Figure, colors: dict[str, str], extra: Sequence[Artist] = ()) -> None:
    handles: list[Artist] = [Patch(color=color, label=cni) for cni, color in colors.items()]
    handles += [Line2D([], [], color=DOT_COLOR, marker="o", markersize=3, linestyle="",
                       label="one repeat"), *extra]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)


def _bar_chart(title: str, panels: list[_Panel]) -> Figure | None:
    """Panels stacked, repeated once per setup present (a facet per setup)."""
    panels = [p for p in panels if not p.rows.empty]
    if not panels:
        return None
    everything = pd.concat([p.rows for p in panels] + [m.rows for p in panels for m in p.marks])
    names = analysis.setups(everything)
    common, own = analysis.setup_labels(names)
    layout = _Layout.of([p.rows for p in panels])
    width = min(max(9.0, 3.5 + 0.3 * len(layout.x)), 26.0)
    fig, axes = _new_figure(len(names) * len(panels), width, title,
                            _context(everything, common) + " · " + HOW_TO_READ)
    extra: dict[str, Artist] = {}
    for i, setup in enumerate(names):
        for j, panel in enumerate(panels):
            ax = axes[i * len(panels) + j]
            rows = panel.rows[panel.rows["setup"] == setup]
            _bars(ax, rows, layout, panel.fmt)
            for k, mark in enumerate(panel.marks):
                color = MARK_COLORS[k % len(MARK_COLORS)]
                med = mark.rows[mark.rows["setup"] == setup].groupby(
                    ["cni", "scenario"])["value"].median()
                ax.scatter([layout.x[(str(c), str(s))] for c, s in med.index], med,
                           marker=mark.marker, s=16, color=color, zorder=5)
                extra[mark.label] = Line2D([], [], color=color, marker=mark.marker,
                                           markersize=4, linestyle="", label=mark.label)
            if panel.reference is not None:
                y, label = panel.reference
                ax.axhline(y, color="#555555", linestyle="--", linewidth=1, zorder=1)
                extra[label] = Line2D([], [], color="#555555", linestyle="--", label=label)
            _axes_style(ax, layout)
            if panel.log:
                ax.set_yscale("log")
            ax.set_ylabel(panel.ylabel)
            if len(names) > 1 and j == 0:
                ax.set_title(own[setup], fontsize=9, loc="left", fontweight="bold")
    _legend(fig, layout.colors, list(extra.values()))
    return fig


def _tcp_normalised(df: pd.DataFrame) -> Figure | None:
    ratios = analysis.tcp_ratios(df)
    ratios = ratios[ratios["scenario"] != BASELINE].assign(value=lambda r: r["ratio"])
    return _bar_chart("TCP throughput relative to host-to-host (higher is better)", [_Panel(
        ratios, "ratio to host-to-host TCP throughput\n(same variant, run, repeat, setup)",
        "{:.2f}", reference=(1.0, "host-to-host = 1"))])


def _tcp_absolute(df: pd.DataFrame) -> Figure | None:
    tcp = _shown(df, "tcp", "throughput_bps", "bit/s", GBIT)
    return _bar_chart("TCP throughput (higher is better)",
                      [_Panel(tcp, "TCP throughput (Gbit/s)", "{:.2f}")])


def _rtt(df: pd.DataFrame) -> Figure | None:
    p50 = _shown(df, "icmp", "rtt_p50_ms", "ms", US_PER_MS)
    p99 = _shown(df, "icmp", "rtt_p99_ms", "ms", US_PER_MS)
    return _bar_chart("ICMP round-trip time: p50 bars, p99 markers (lower is better)", [_Panel(
        p50, "round-trip time (µs)", "{:.0f}", [_Marks(p99, "p99 (median of repeats)")])])


def _udp(df: pd.DataFrame) -> Figure | None:
    rate = _shown(df, "udp", "throughput_bps", "bit/s", GBIT)
    loss = _shown(df, "udp", "loss_pct", "%", 1.0)
    return _bar_chart("UDP: receiver throughput (higher is better) and loss (lower is better)",
                      [_Panel(rate, "UDP receiver throughput (Gbit/s)", "{:.2f}"),
                       _Panel(loss, "UDP loss (%)", "{:.1f}")])


def _rr_latency(df: pd.DataFrame) -> Figure | None:
    p50 = _shown(df, "tcp_rr", "latency_p50_us", "us", 1.0)
    marks = [_Marks(_shown(df, "tcp_rr", f"latency_{p}_us", "us", 1.0), f"{p} (median of repeats)",
                    m) for p, m in (("p90", "^"), ("p99", "D"))]
    return _bar_chart("TCP request/response latency per transaction: p50 bars, p90/p99 markers "
                      "(lower is better)", [_Panel(p50, "latency (µs)", "{:.0f}", marks)])


def _cpu_per_gbit(df: pd.DataFrame) -> Figure | None:
    cpu = _shown(df, "tcp", "cpu_s_per_gbit", None, 1.0)
    unit = _values(cpu, "unit") or "s/Gbit"
    return _bar_chart("CPU time of the whole box per Gbit delivered over TCP (lower is better; "
                      "all cores, softirq included; log axis)",
                      [_Panel(cpu, f"CPU seconds per Gbit ({unit}, log)", "{:.2f}", log=True)])


def _how_decided(table: pd.DataFrame) -> str:
    """The margin, the rounds and the test behind a verdict, in one line."""
    rounds = table["rounds"] if "rounds" in table.columns else pd.Series(dtype=int)
    span = (f"{int(rounds.min())}" if rounds.min() == rounds.max()
            else f"{int(rounds.min())}–{int(rounds.max())}") if len(rounds) else "0"
    return (f"rounds {span} · margin ±{verdict.MARGIN:.0%} · {verdict.TEST}, "
            f"alpha {verdict.ALPHA}")


def _verdict(df: pd.DataFrame) -> Figure | None:
    """Each verdict metric's variants with their tiers: a dot at the estimate (geometric mean
    of the rounds), its 95% interval, on a log axis; sorted by estimate, but only the tier
    letters say what is better (same letter: not told apart)."""
    table = verdict.verdict(df)
    if table.empty:
        return None
    panels = list(table.groupby(["metric", "setup"], sort=False))
    names = list(dict.fromkeys(table["setup"]))
    common, own = analysis.setup_labels(names)
    height = max(1.6, 0.36 * int(table.groupby(["metric", "setup"]).size().max()) + 0.9)
    fig, axes = _new_figure(len(panels), 11.0, "Verdict: pod-to-pod-cross-node, tiers from paired "
                            "tests (a shared letter = not told apart; no letter in common = told apart)",
                            f"{common} · {_how_decided(table)} · dot = geometric mean of the "
                            "rounds, whisker = its 95% CI · right: the classic write-up's "
                            f"order, {analysis.CLASSIC_ORDER}", height)
    colors = _colors(analysis.ordered(table["cni"], CNI_ORDER))
    for ax, ((metric, setup), mine) in zip(axes, panels):
        mine = mine.reset_index(drop=True)
        y = list(range(len(mine)))[::-1]
        for yi, r in zip(y, mine.itertuples()):
            st = {"median": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high}
            ax.scatter([r.estimate], [yi], color=colors[r.cni], s=40, zorder=4)
            _whisker(ax, yi, st, horizontal=True)
            ax.annotate(f"{r.estimate:.3g}", (np.nanmax([r.estimate, r.ci_high]), yi),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(y, [f"{r.tier or '–'}  {r.cni}" for r in mine.itertuples()])
        seconds = ax.secondary_yaxis("right")
        seconds.set_yticks(y, [_classic(r.cni) for r in mine.itertuples()], fontsize=8)
        ax.set_xscale("log")
        if metric == "tcp_ratio_to_host":
            ax.axvline(1.0, color="#555555", linestyle="--", linewidth=1, zorder=1)
        m = verdict.METRICS[str(metric)]
        better = "higher" if m.higher_is_better else "lower"
        ax.set_xlabel(f"{m.label} ({better} is better; log axis)")
        ax.grid(axis="x", color="#dddddd", zorder=0)
        ax.set_axisbelow(True)
        ax.margins(x=0.12)
        if len(names) > 1:
            ax.set_title(own[str(setup)], fontsize=9, loc="left", fontweight="bold")
    return fig


def _classic(cni: str) -> str:
    if cni == "host":
        return "baseline: hostNetwork"
    tier = analysis.CLASSIC_TIER.get(cni)
    return f"classic: tier {tier[0]}, {tier[1]}" if tier else "classic: not ranked"


CHARTS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "tcp_throughput_normalised": _tcp_normalised, "tcp_throughput": _tcp_absolute,
    "verdict": _verdict, "rtt": _rtt, "udp": _udp, "rr_latency": _rr_latency,
    "cpu_per_gbit": _cpu_per_gbit,
}
FORMATS = ("png", "svg")
#: every file name plot_all may write: those it did not write this time are removed
OUTPUTS = tuple(f"{stem}.{ext}" for stem in CHARTS for ext in FORMATS) + (
    "summary.csv", "summary.md", "verdict.csv", "pairs.csv", PUBLISHED_NAME, AGREEMENT_NAME)


def figure(df: pd.DataFrame, name: str) -> Figure | None:
    """One chart of CHARTS by name (for notebooks), or None when its rows are absent."""
    return CHARTS[name](analysis.with_setup(df))


def sweep(df: pd.DataFrame, parameter: str, protocol: str = "tcp",
          metric: str = "ratio_to_host", scenario: str = analysis.CROSS_NODE,
          factor: float = 1.0) -> Figure | None:
    """One metric against one setup parameter (streams, mtu, msg_size, …): a line per
    variant through the medians, CI whiskers; other parameters must be equal per line."""
    table = analysis.describe(df)
    table = table[(table["protocol"] == protocol) & (table["metric"] == metric)
                  & (table["scenario"] == scenario)]
    prefix = parameter + "="
    parts = table["setup"].str.split(", ")
    value = parts.map(lambda ps: next((p[len(prefix):] for p in ps if p.startswith(prefix)), None))
    rest = parts.map(lambda ps: ", ".join(p for p in ps if not p.startswith(prefix)))
    table = table.assign(x=pd.to_numeric(value, errors="coerce"), rest=rest).dropna(subset=["x"])
    if table.empty:
        return None
    common, own = analysis.setup_labels(list(dict.fromkeys(table["rest"])))
    fig, (ax,) = _new_figure(1, 10.0, f"{protocol} {metric} ({scenario}) over {parameter}",
                             f"{common} · point = median over repeats, whisker = 95% CI")
    colors = _colors(analysis.ordered(table["cni"], CNI_ORDER))
    several = table["rest"].nunique() > 1
    for (cni, rest), line in table.groupby(["cni", "rest"], sort=False):
        line = line.sort_values("x")
        label = f"{cni} ({own[str(rest)]})" if several else str(cni)
        med = line["median"] * factor
        err = [(line["median"] - line["ci_low"]) * factor, (line["ci_high"] - line["median"]) * factor]
        ax.errorbar(line["x"], med, yerr=np.nan_to_num(np.array(err, dtype=float)),
                    color=colors[str(cni)], marker="o", capsize=3, label=label)
    xs = table["x"][table["x"] > 0]
    if len(xs) and xs.max() / xs.min() >= 16:  # message sizes 64…16384: even steps on a log axis
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(xs.unique()), [analysis.fmt_value(v) for v in sorted(xs.unique())])
    ax.set_xlabel(parameter)
    ax.set_ylabel(f"{metric}" + (f" × {factor:g}" if factor != 1 else ""))
    ax.grid(color="#dddddd")
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    return fig


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The summary table (see :func:`k8stopo.analysis.summary`)."""
    return analysis.summary(df)


def _cell(row: pd.Series, name: str, fmt: str) -> str:
    """'1.23 [1.10–1.31]' (median [95% CI]); '–' when not measured."""
    if name not in row or pd.isna(row[name]):
        return "–"
    text = fmt.format(row[name])
    if not pd.isna(row[f"{name}_ci_low"]):
        text += f" [{fmt.format(row[f'{name}_ci_low'])}–{fmt.format(row[f'{name}_ci_high'])}]"
    return text


def _cv(row: pd.Series, name: str) -> str:
    cv = row.get(f"{name}_cv")
    return "–" if cv is None or pd.isna(cv) else f"{cv:.1%}"


# (summary column, header, format), in table order
TABLE = (
    ("tcp_gbps", "TCP Gbit/s", "{:.2f}"),
    ("tcp_ratio_to_host", "TCP ratio to host-to-host (paired)", "{:.2f}"),
    ("rtt_p50_us", "RTT p50 µs", "{:.0f}"),
    ("rtt_p99_us", "RTT p99 µs", "{:.0f}"),
    ("udp_gbps", "UDP Gbit/s (receiver)", "{:.2f}"),
    ("udp_loss_pct", "UDP loss %", "{:.2f}"),
    ("rr_p50_us", "RR p50 µs", "{:.0f}"),
    ("rr_p99_us", "RR p99 µs", "{:.0f}"),
    ("cpu_s_per_gbit", "CPU s/Gbit", "{:.2f}"),
)
WITH_CV = ("tcp_gbps", "tcp_ratio_to_host")


def summary_markdown(df: pd.DataFrame, table: pd.DataFrame | None = None,
                     described: pd.DataFrame | None = None) -> str:
    """The summary as GitHub tables, one per setup, headed by where, when and how it was
    measured; cells are median [95% CI], with the CV of the TCP columns, then warnings."""
    df = analysis.with_setup(df)
    table = analysis.summary(df) if table is None else table
    if table.empty:
        return "no measurements\n"
    started = df["started_at"].dropna()
    names = list(dict.fromkeys(table["setup"]))
    common, own = analysis.setup_labels(names)
    lines = [" · ".join([f"run(s) {_values(df, 'run_id')}",
                         f"measured {started.min()} to {started.max()}",
                         _context(df, common)]),
             "", "Cells: median over repeats [95% bootstrap CI of the median]; CV = coefficient "
             "of variation of the repeats."]
    cols = [c for c in TABLE if c[0] in table.columns]
    for setup in names:
        part = table[table["setup"] == setup]
        if part.empty:
            continue
        heads = ["CNI", "scenario"]
        for name, head, _ in cols:
            heads.append(head)
            if name in WITH_CV:
                heads.append(f"{head.split(' (')[0]} CV")
        heads += ["repeats", *(["failed"] if "failed" in table.columns else [])]
        lines += ["", f"### {own[setup]}" if len(names) > 1 else "", "",
                  "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for _, row in part.iterrows():
            cells = [str(row["cni"]), str(row["scenario"])]
            for name, _, fmt in cols:
                cells.append(_cell(row, name, fmt))
                if name in WITH_CV:
                    cells.append(_cv(row, name))
            cells.append(str(int(row["repeats"])))
            if "failed" in table.columns:
                cells.append(str(int(row["failed"])))
            lines.append("| " + " | ".join(cells) + " |")
    lines += _verdict_markdown(df, table)
    failed = analysis.failures(df)
    if not failed.empty:
        homes = analysis.full_setups(df)  # a ping setup lacks streams: named by its home's
        lines += ["", "Failed measurements (no value; the reason from the tool):", *[
            f"- {r.cni} {r.scenario} {r.protocol} ({own.get(homes[r.setup][0], r.setup)}): "
            f"{r.failed}× {r.error}" for r in failed.itertuples()]]
    described = analysis.describe(df) if described is None else described
    noisy = analysis.noisy(described, verdict.MARGIN)
    if noisy:
        lines += ["", f"Noise: {len(noisy)} statistic(s) vary by more than the ±"
                  f"{verdict.MARGIN:.0%} margin between repeats (coefficient of variation); "
                  "the verdict's tests take that spread into account:", *[f"- {w}" for w in noisy]]
    return "\n".join(line for i, line in enumerate(lines)
                     if line or i == 0 or lines[i - 1]) + "\n"


def _verdict_markdown(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The verdict per metric and setup: variants by estimate, each with its tier (same
    letter: the tests could not tell them apart), interval and rounds; then the decided
    pairs' count and the CPU cost beside the TCP ratio when measured."""
    pair_table = verdict.pairs(df)
    tiers = verdict.verdict(df, pair_table=pair_table)
    if tiers.empty:
        return []
    cpu = table.set_index(["setup", "cni", "scenario"]).get("cpu_s_per_gbit")
    names = list(dict.fromkeys(tiers["setup"]))
    _, own = analysis.setup_labels(names)
    count = verdict.tally(pair_table)
    lines = ["", "Verdict (pod-to-pod-cross-node): tiers from paired tests; variants "
             "sharing a letter were not told apart, variants with no letter in common were "
             "(pairs.csv says which way), and neither the letters nor the order of the list "
             f"is a ranking. {_how_decided(tiers)}. Pairs: "
             f"{count['faster'] + count['slower']} ordered, "
             f"{count['equivalent']} equivalent within the margin, "
             f"{count['undecided']} undecided (pairs.csv). Classic order: "
             f"{analysis.CLASSIC_ORDER}."]
    for (metric, setup), mine in tiers.groupby(["metric", "setup"], sort=False):
        m = verdict.METRICS[str(metric)]
        where = f", {own[str(setup)]}" if len(names) > 1 else ""
        lines += ["", f"{m.label} ({'higher' if m.higher_is_better else 'lower'} is "
                  f"better{where}):", ""]
        for r in mine.itertuples():
            ci = "" if pd.isna(r.ci_low) else f" [{r.ci_low:.3g}–{r.ci_high:.3g}]"
            key = (setup, r.cni, analysis.CROSS_NODE)
            cost = (f", {cpu[key]:.2f} CPU s/Gbit" if metric == "tcp_ratio_to_host"
                    and cpu is not None and key in cpu.index and not pd.isna(cpu[key]) else "")
            lines.append(f"- tier {r.tier or '– (fewer than 2 rounds)'}: {r.cni}: "
                         f"{r.estimate:.3g}{ci}, {r.rounds} rounds{cost} ({_classic(r.cni)})")
    return lines


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in FORMATS:
        path = out_dir / f"{stem}.{ext}"
        # no date in the SVG and a fixed id salt, so unchanged data gives unchanged files
        with matplotlib.rc_context({"svg.hashsalt": "k8stopo"}):
            fig.savefig(path, dpi=150, metadata={"Date": None} if ext == "svg" else None)
        paths.append(path)
    return paths


def plot_all(df: pd.DataFrame, out_dir: Path,
             published: pd.DataFrame | None = None) -> list[Path]:
    """Write every chart the rows allow (PNG + SVG), summary.csv, summary.md, the verdict's
    verdict.csv and pairs.csv, and with ``published`` figures published_comparison.md;
    remove every other file of OUTPUTS left in ``out_dir`` by an earlier run; log each
    noisy statistic at INFO (``-v``; summary.md lists them too); return the paths written.
    A chart whose rows are absent (no icmp, say) is skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = analysis.with_setup(df)
    described = analysis.describe(df)
    written: list[Path] = []
    for stem, chart in CHARTS.items():
        fig = chart(df)
        if fig is not None:
            written += _save(fig, out_dir, stem)
    table = analysis.summary(df)
    table.to_csv(out_dir / "summary.csv", index=False)
    (out_dir / "summary.md").write_text(summary_markdown(df, table, described))
    pair_table = verdict.pairs(df)
    pair_table.to_csv(out_dir / "pairs.csv", index=False)
    verdict.verdict(df, pair_table=pair_table).to_csv(out_dir / "verdict.csv", index=False)
    written += [out_dir / n for n in ("summary.csv", "summary.md", "verdict.csv", "pairs.csv")]
    if df["run_id"].nunique() > 1:  # several runs: does each run's own verdict agree?
        verdict.agreement(df).to_csv(out_dir / AGREEMENT_NAME, index=False)
        written.append(out_dir / AGREEMENT_NAME)
    if published is not None:
        from . import published as pub
        path = out_dir / PUBLISHED_NAME
        path.write_text(pub.comparison_markdown(df, published))
        written.append(path)
    for name in OUTPUTS:
        stale = out_dir / name
        if stale not in written and stale.is_file():
            stale.unlink()
    for line in analysis.noisy(described, verdict.MARGIN):
        log.info("%s", line)
    return written


def closing_lines(df: pd.DataFrame, out_dir: Path) -> list[str]:
    """What a run says at its end about its verdict and noise, from the pairs.csv just
    written in ``out_dir`` and the rows: pairs resolved and undecided, noisy statistics."""
    pair_table = pd.read_csv(Path(out_dir) / "pairs.csv")
    count = verdict.tally(pair_table)
    resolved = len(pair_table) - count["undecided"]
    noisy = analysis.noisy(analysis.describe(analysis.with_setup(df)), verdict.MARGIN)
    return [f"verdict: {resolved} of {len(pair_table)} pairs resolved ({count['faster'] + count['slower']} "
            f"ordered, {count['equivalent']} equivalent within ±{verdict.MARGIN:.0%}), "
            f"{count['undecided']} undecided; tiers in {Path(out_dir) / 'verdict.csv'}",
            f"noise: {len(noisy)} statistic(s) vary by more than ±{verdict.MARGIN:.0%} between "
            f"repeats (listed in {Path(out_dir) / 'summary.md'}; -v logs them)"]


#: the scale benchmark's panels: (title, metrics drawn as lines, unit label, divisor)
SCALE_PANELS = (
    ("bring-up and teardown", ("build_ms", "teardown_ms"), "s", 1000.0),
    ("build per phase", ("underlay_ms", "agents_ms", "pods_ms", "ready_ms"), "s", 1000.0),
    ("teardown per phase", ("teardown_agents_ms", "teardown_pods_ms", "teardown_mininet_ms",
                            "teardown_record_ms"), "s", 1000.0),
    ("BGP convergence, withdrawal, rejoin", ("converge_ms", "withdraw_ms", "rejoin_ms"), "s",
     1000.0),
    ("BGP sessions", ("bgp_sessions_total", "bgp_sessions_max_per_node"), "count", 1.0),
    ("BIRD CPU per node", ("bird_cpu_s_per_node", "bird_cpu_s_max_node"), "CPU s", 1.0),
    ("BIRD memory per node", ("bird_rss_per_node", "bird_rss_max_node"), "MiB", 1024.0),
    ("BIRDs with netlink drops", ("netlink_drop_birds",), "count", 1.0),
)
#: panels per row of the scale chart
SCALE_PANELS_PER_ROW = 4


#: the scale table's columns: (metric, heading, divisor, format)
SCALE_COLUMNS = (
    ("build_ms", "build s", 1000.0, ".1f"),
    ("underlay_ms", "underlay s", 1000.0, ".1f"), ("agents_ms", "agents s", 1000.0, ".1f"),
    ("pods_ms", "pods s", 1000.0, ".1f"), ("ready_ms", "ready s", 1000.0, ".1f"),
    ("blocks_90pct_ms", "90% of blocks s", 1000.0, ".1f"),
    ("converge_ms", "converge s", 1000.0, ".1f"),
    ("withdraw_ms", "withdraw s", 1000.0, ".2f"), ("rejoin_ms", "rejoin s", 1000.0, ".1f"),
    ("bgp_sessions_total", "sessions (ends)", 1.0, ",.0f"),
    ("bird_cpu_s_per_node", "BIRD CPU s/node", 1.0, ".2f"),
    ("bird_rss_per_node", "BIRD MiB/node", 1024.0, ".1f"),
    ("netlink_drop_birds", "BIRDs with netlink drops", 1.0, ".0f"),
    ("teardown_ms", "teardown s", 1000.0, ".2f"),
    ("teardown_agents_ms", "teardown daemons s", 1000.0, ".2f"),
    ("teardown_pods_ms", "teardown pods s", 1000.0, ".2f"),
    ("teardown_mininet_ms", "teardown Mininet s", 1000.0, ".2f"),
)


def scale_charts(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``k8stopo scale``'s chart (:func:`scale_figure`) saved into ``out_dir``; none
    without scale rows."""
    fig = scale_figure(df)
    if fig is None:
        return []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(out_dir), "scale")


def _scale_rows(df: pd.DataFrame) -> pd.DataFrame:
    """``k8stopo scale``'s rows, ``bgp_mode`` "" where the variant has none."""
    rows = df[df.protocol == "control"].copy()
    rows["bgp_mode"] = rows.get("bgp_mode", pd.Series("", index=rows.index)).fillna("")
    return rows


def _shape(mode: str, pods: object) -> str:
    """A cluster shape as a legend says it: "rr2, 0 pods/node"."""
    return ", ".join([*([mode] if mode else []), f"{pods} pods/node"])


def scale_markdown(df: pd.DataFrame) -> str:
    """``k8stopo scale``'s rows as a table: a line per cluster shape, the median over
    repeats of each metric, and the clusters that failed with their reasons."""
    rows = _scale_rows(df)
    columns = [c for c in SCALE_COLUMNS if rows.metric.eq(c[0]).any()]
    table = rows[rows.metric.isin([c[0] for c in columns])].pivot_table(
        index=["nodes", "pods_per_node", "bgp_mode"], columns="metric", values="value",
        aggfunc="median")
    lines = ["| nodes | pods/node | BGP mode | " + " | ".join(c[1] for c in columns) + " |",
             "|" + " --- |" * (3 + len(columns))]
    for key, values in table.iterrows():
        cells = [format(values[m] / div, spec) if pd.notna(values[m]) else "–"
                 for m, _, div, spec in columns]
        lines.append("| " + " | ".join([*(str(k) for k in key), *cells]) + " |")
    for _, row in rows[rows.metric == analysis.FAILED].iterrows():
        lines.append(f"\nfailed: {row.nodes} nodes × {row.pods_per_node} pods, "
                     f"{row.bgp_mode or '-'}: {row.get('error', '') or 'no reason recorded'}")
    return "\n".join(lines)


def scale_figure(df: pd.DataFrame) -> Figure | None:
    """Each metric of ``k8stopo scale`` against the number of nodes, a line per BGP mode
    and pods per node (median over repeats, every repeat as a dot), so clusters of other
    shapes never share a line; a cluster that failed is a red cross on the bring-up panel's
    axis; panels without rows are left out (None if all are)."""
    rows = _scale_rows(df)
    panels = [p for p in SCALE_PANELS if rows.metric.isin(p[1]).any()]
    if not panels:
        return None
    cols = min(len(panels), SCALE_PANELS_PER_ROW)
    nrows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.remove()
    for ax, (title, metrics, unit, div) in zip(axes, panels):
        for (metric, mode, pods), group in rows[rows.metric.isin(metrics)].groupby(
                ["metric", "bgp_mode", "pods_per_node"]):
            med = group.groupby("nodes").value.median() / div
            label = f"{metric.removesuffix('_ms')} ({_shape(mode, pods)})"
            line, = ax.plot(med.index, med.values, marker="o", label=label)
            ax.scatter(group.nodes, group.value / div, color=line.get_color(), s=8, alpha=0.5)
        if "build_ms" in metrics:  # a cluster that failed is a result too: marked on the axis
            for (mode, pods), group in rows[rows.metric == analysis.FAILED].groupby(
                    ["bgp_mode", "pods_per_node"]):
                ax.scatter(group.nodes, [0.0] * len(group), marker="x", color="red", s=40,
                           zorder=3, label=f"failed ({_shape(mode, pods)})")
        ax.set(title=title, xlabel="nodes", ylabel=unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    per_node = ", ".join(str(n) for n in sorted(rows.pods_per_node.unique()))
    fig.suptitle(f"scale: {', '.join(sorted(rows.cni.unique()))}, pods per node {per_node}",
                 fontsize=9.5)
    return fig
