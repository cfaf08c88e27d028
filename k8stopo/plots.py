"""Charts and a summary table from results CSVs (``k8stopo plot``).

Every number drawn or tabulated comes from the rows passed in; the only constants
are unit conversions. Throughput is normalised *paired*: each TCP value is divided
by the host-to-host TCP throughput of the same variant, run and repeat, measured
minutes apart on the same emulated cluster. That cancels the drift of a shared
machine (about ±15% from one minute to the next), which a ratio of medians keeps.

Bars are the median over repeats; a whisker spans min–max and a dot marks each
repeat, so a reader sees how much one bar can be trusted.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .spec import SCENARIOS, SPEC_VARIANTS

BASELINE = "host-to-host"
CNI_ORDER = SPEC_VARIANTS
# One hue per project, a shade per variant, so families read together across charts.
CNI_COLORS = {
    "host": "#525252",
    "flannel-vxlan": "#08519c", "flannel-host-gw": "#4292c6", "flannel-udp": "#9ecae1",
    "calico-bgp": "#a63603", "calico-ipip": "#e6550d", "calico-vxlan": "#fdae6b",
    "weave-fastdp": "#006d2c", "weave-sleeve": "#74c476",
    "macvlan": "#6a51a3", "docker-overlay": "#c51b8a",
}
OTHER_COLORS = ("#8c6d31", "#bd9e39", "#843c39", "#7b4173", "#637939")
KEYS = ["cni", "scenario"]
PAIR = ["run_id", "cni", "repeat"]  # same cluster, minutes apart
BIT_PER_GBIT = 1e9
US_PER_MS = 1e3
# (protocol, metric) -> (unit in the CSV per SPEC, factor to the unit shown: Gbit/s, µs, %)
SHOWN = {
    ("tcp", "throughput_bps"): ("bit/s", 1 / BIT_PER_GBIT),
    ("udp", "throughput_bps"): ("bit/s", 1 / BIT_PER_GBIT),
    ("udp", "loss_pct"): ("%", 1.0),
    ("icmp", "rtt_p50_ms"): ("ms", US_PER_MS),
    ("icmp", "rtt_p99_ms"): ("ms", US_PER_MS),
}
DOT_COLOR = "#222222"
P99_COLOR = "#d62728"


def ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Known names in their fixed order, then any others alphabetically."""
    present = set(values)
    return [v for v in preferred if v in present] + sorted(present - set(preferred))


def _tick(scenario: str) -> str:
    """'pod-to-pod-same-node' on two lines, so neighbouring long names do not touch."""
    parts = scenario.split("-", 3)
    return scenario if len(parts) < 4 else "-".join(parts[:3]) + "\n" + parts[3]


def _metric(df: pd.DataFrame, protocol: str, metric: str, unit: str) -> pd.DataFrame:
    """The rows of one metric, refusing a unit other than SPEC's (converting it would lie)
    and a measurement present twice (e.g. one CSV passed twice), which would skew medians."""
    sel = df[(df["protocol"] == protocol) & (df["metric"] == metric)]
    wrong = sorted(set(sel["unit"]) - {unit})
    if wrong:
        raise ValueError(f"{protocol} {metric} rows in unit {', '.join(wrong)}, expected {unit}")
    dup = sel[sel.duplicated(PAIR + ["scenario"], keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise ValueError(f"{protocol} {metric} measured more than once for run {first['run_id']}, "
                         f"{first['cni']}, {first['scenario']}, repeat {first['repeat']} "
                         "(the same CSV given twice?)")
    return sel


def tcp_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Each TCP throughput over the host-to-host TCP throughput of the same cni, run and repeat.

    Measurements without such a baseline are left out, since any other divisor would
    bring back the drift this pairing cancels. Host-to-host rows get 1.0 by definition.
    """
    tcp = _metric(df, "tcp", "throughput_bps", "bit/s")
    base = tcp[tcp["scenario"] == BASELINE][PAIR + ["value"]].rename(columns={"value": "baseline"})
    paired = tcp.merge(base, on=PAIR, how="inner")
    return paired.assign(ratio=paired["value"] / paired["baseline"])


def _shown(df: pd.DataFrame, protocol: str, metric: str) -> pd.DataFrame:
    """The rows of one metric with ``value`` converted to the unit the charts show."""
    unit, factor = SHOWN[(protocol, metric)]
    rows = _metric(df, protocol, metric, unit)
    return rows.assign(value=rows["value"] * factor)


def _repeats(df: pd.DataFrame) -> pd.Series:
    """Repeats per cni × scenario: distinct (run, repeat) pairs measured."""
    return df.drop_duplicates(KEYS + ["run_id", "repeat"]).groupby(KEYS).size()


def _values(df: pd.DataFrame, column: str) -> str:
    """The distinct values of a parameter column, e.g. "2" or "2, 3"."""
    vals = sorted(df[column].dropna().unique())
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals)


def _span(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _setup(df: pd.DataFrame) -> list[str]:
    """The parameters of the rows, as short phrases for subtitles and table headers."""
    iperf = df[df["protocol"] != "icmp"]  # ping has no streams (bench records 1)
    streams = [f"streams {_values(iperf, 'streams')}"] if not iperf.empty else []
    return [f"nodes {_values(df, 'nodes')}", f"pods/node {_values(df, 'pods_per_node')}",
            f"duration {_values(df, 'duration_s')} s", *streams,
            f"MTU {_values(df, 'mtu')}", f"kernel {_values(df, 'kernel')}"]


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
        present = {key for f in frames for key in zip(f["cni"], f["scenario"])}
        scenarios = ordered((s for _, s in present), SCENARIOS)
        cnis = ordered((c for c, _ in present), CNI_ORDER)
        groups = [[c for c in cnis if (c, s) in present] for s in scenarios]
        width = 0.84 / max(len(g) for g in groups)
        x = {(c, s): i + (j - (len(group) - 1) / 2) * width
             for i, (s, group) in enumerate(zip(scenarios, groups)) for j, c in enumerate(group)}
        others = [c for c in cnis if c not in CNI_COLORS]
        colors = {c: CNI_COLORS[c] if c in CNI_COLORS
                  else OTHER_COLORS[others.index(c) % len(OTHER_COLORS)] for c in cnis}
        return cls(x, scenarios, colors, width)


def _bars(ax: Axes, long: pd.DataFrame, layout: _Layout, fmt: str) -> None:
    """Median bar, min–max whisker, a dot per repeat, and the median written above."""
    for (cni, scenario), vals in long.groupby(KEYS)["value"]:
        x, med, lo, hi = layout.x[(cni, scenario)], vals.median(), vals.min(), vals.max()
        ax.bar(x, med, layout.width * 0.92, color=layout.colors[cni], zorder=2)
        ax.errorbar(x, med, yerr=[[med - lo], [hi - med]], fmt="none", ecolor=DOT_COLOR,
                    elinewidth=1, capsize=2, zorder=3)
        n = len(vals)
        offsets = [(i - (n - 1) / 2) * layout.width * 0.5 / max(n - 1, 1) for i in range(n)]
        ax.scatter([x + o for o in offsets], sorted(vals), s=9, color=DOT_COLOR, zorder=4,
                   linewidths=0)
        ax.annotate(fmt.format(med), (x, hi), xytext=(0, 4), textcoords="offset points",
                    rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(layout.scenarios)), [_tick(s) for s in layout.scenarios])
    ax.set_xlim(-0.5, len(layout.scenarios) - 0.5)
    ax.margins(y=0.22)  # room for the written medians; bars keep y=0 as the floor
    ax.grid(axis="y", color="#dddddd", zorder=0)
    ax.set_axisbelow(True)


def _figure(layout: _Layout, rows: int, title: str, subtitle: str) -> tuple[Figure, list[Axes]]:
    n_bars = len(layout.x)
    fig = Figure(figsize=(min(max(9.0, 3.5 + 0.3 * n_bars), 26.0), 1.3 + 3.6 * rows),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])
    fig.suptitle(title, fontweight="bold")
    axes[0].set_title(subtitle, fontsize=8.5, color="#444444")
    return fig, axes


def _subtitle(shown: pd.DataFrame) -> str:
    """What the drawn rows were measured with, and how to read the marks."""
    line = " · ".join(_setup(shown) + [f"repeats {_span(_repeats(shown))}"])
    return "\n".join(textwrap.wrap(line, 150) +
                     ["bar = median over repeats, whisker = min–max, dot = one repeat"])


def _legend(fig: Figure, layout: _Layout, extra: Sequence[Artist] = ()) -> None:
    handles: list[Artist] = [Patch(color=color, label=cni)
                               for cni, color in layout.colors.items()]
    handles += [Line2D([], [], color=DOT_COLOR, marker="o", markersize=3, linestyle="",
                       label="one repeat"), *extra]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)


def _tcp_normalised(df: pd.DataFrame) -> Figure | None:
    ratios = tcp_ratios(df)
    ratios = ratios[ratios["scenario"] != BASELINE].assign(value=lambda r: r["ratio"])
    if ratios.empty:
        return None
    layout = _Layout.of([ratios])
    fig, (ax,) = _figure(layout, 1, "TCP throughput relative to host-to-host (higher is better)",
                         _subtitle(ratios))
    ax.axhline(1.0, color="#555555", linestyle="--", linewidth=1, zorder=1)
    _bars(ax, ratios, layout, "{:.2f}")
    ax.set_ylabel("ratio to host-to-host TCP throughput\n(same variant, run and repeat)")
    _legend(fig, layout, [Line2D([], [], color="#555555", linestyle="--",
                                 label="host-to-host = 1")])
    return fig


def _tcp_absolute(df: pd.DataFrame) -> Figure | None:
    tcp = _shown(df, "tcp", "throughput_bps")
    if tcp.empty:
        return None
    layout = _Layout.of([tcp])
    fig, (ax,) = _figure(layout, 1, "TCP throughput (higher is better)", _subtitle(tcp))
    _bars(ax, tcp, layout, "{:.2f}")
    ax.set_ylabel("TCP throughput (Gbit/s)")
    _legend(fig, layout)
    return fig


def _rtt(df: pd.DataFrame) -> Figure | None:
    p50, p99 = _shown(df, "icmp", "rtt_p50_ms"), _shown(df, "icmp", "rtt_p99_ms")
    if p50.empty:
        return None
    layout = _Layout.of([p50, p99])
    fig, (ax,) = _figure(layout, 1, "ICMP round-trip time: p50 bars, p99 markers (lower is better)",
                         _subtitle(p50))
    _bars(ax, p50, layout, "{:.0f}")
    tails = p99.groupby(KEYS)["value"].median()
    ax.scatter([layout.x[k] for k in tails.index], tails, marker="D", s=16, color=P99_COLOR,
               zorder=5)
    ax.set_ylabel("round-trip time (µs)")
    _legend(fig, layout, [Line2D([], [], color=P99_COLOR, marker="D", markersize=4, linestyle="",
                                 label="p99 (median of repeats)")])
    return fig


def _udp(df: pd.DataFrame) -> Figure | None:
    rate, loss = _shown(df, "udp", "throughput_bps"), _shown(df, "udp", "loss_pct")
    if rate.empty and loss.empty:
        return None
    layout = _Layout.of([rate, loss])
    fig, (top, bottom) = _figure(layout, 2, "UDP: receiver throughput (higher is better) and "
                                 "loss (lower is better)", _subtitle(pd.concat([rate, loss])))
    _bars(top, rate, layout, "{:.2f}")
    top.set_ylabel("UDP receiver throughput (Gbit/s)")
    _bars(bottom, loss, layout, "{:.1f}")
    bottom.set_ylabel("UDP loss (%)")
    _legend(fig, layout)
    return fig


CHARTS = {"tcp_throughput_normalised": _tcp_normalised, "tcp_throughput": _tcp_absolute,
          "rtt": _rtt, "udp": _udp}


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per cni × scenario: TCP Gbit/s (median, min, max), paired ratio to host-to-host,
    RTT p50/p99 in µs, UDP receiver Gbit/s and loss %, all medians over repeats."""
    def median(protocol: str, metric: str) -> pd.Series:
        return _shown(df, protocol, metric).groupby(KEYS)["value"].median()

    tcp = _shown(df, "tcp", "throughput_bps").groupby(KEYS)["value"]
    repeats = _repeats(df)
    table = pd.DataFrame({
        "tcp_gbps_median": tcp.median(), "tcp_gbps_min": tcp.min(), "tcp_gbps_max": tcp.max(),
        "tcp_ratio_to_host": tcp_ratios(df).groupby(KEYS)["ratio"].median(),
        "rtt_p50_us": median("icmp", "rtt_p50_ms"), "rtt_p99_us": median("icmp", "rtt_p99_ms"),
        "udp_gbps_median": median("udp", "throughput_bps"),
        "udp_loss_pct_median": median("udp", "loss_pct"),
        "repeats": repeats,
    }, index=repeats.index).reset_index()
    rank = {"cni": ordered(table["cni"], CNI_ORDER),
            "scenario": ordered(table["scenario"], SCENARIOS)}
    return table.sort_values(KEYS, key=lambda col: col.map(rank[col.name].index),
                             ignore_index=True)


def _cell(value: float, fmt: str) -> str:
    return "–" if pd.isna(value) else fmt.format(value)


def summary_markdown(df: pd.DataFrame) -> str:
    """The summary as a GitHub table, headed by where, when and how it was measured."""
    table = summary(df)
    started = df["started_at"].dropna()
    head = " · ".join([
        f"run(s) {_values(df, 'run_id')}", f"measured {started.min()} to {started.max()}",
        *_setup(df), f"repeats {_span(table['repeats'])}",
    ]) if not table.empty else "no measurements"
    columns = ["CNI", "scenario", "TCP Gbit/s (median)", "TCP Gbit/s min–max",
               "TCP ratio to host-to-host (paired, median)", "RTT p50 µs", "RTT p99 µs",
               "UDP Gbit/s (receiver)", "UDP loss %", "repeats"]
    lines = [head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in table.itertuples(index=False):
        spread = ("–" if pd.isna(r.tcp_gbps_min)
                  else f"{r.tcp_gbps_min:.2f}–{r.tcp_gbps_max:.2f}")
        cells = [r.cni, r.scenario, _cell(r.tcp_gbps_median, "{:.2f}"), spread,
                 _cell(r.tcp_ratio_to_host, "{:.2f}"), _cell(r.rtt_p50_us, "{:.0f}"),
                 _cell(r.rtt_p99_us, "{:.0f}"), _cell(r.udp_gbps_median, "{:.2f}"),
                 _cell(r.udp_loss_pct_median, "{:.2f}"), str(r.repeats)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_all(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write every chart the rows allow (PNG + SVG), summary.csv and summary.md; return the paths.

    A chart whose data is absent (no icmp rows, say) is skipped, not an error.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, chart in CHARTS.items():
        fig = chart(df)
        if fig is None:
            continue
        for ext in ("png", "svg"):
            path = out_dir / f"{stem}.{ext}"
            # no date in the SVG and a fixed id salt, so unchanged data gives unchanged files
            with matplotlib.rc_context({"svg.hashsalt": "k8stopo"}):
                fig.savefig(path, dpi=150, metadata={"Date": None} if ext == "svg" else None)
            written.append(path)
    summary(df).to_csv(out_dir / "summary.csv", index=False)
    (out_dir / "summary.md").write_text(summary_markdown(df))
    return written + [out_dir / "summary.csv", out_dir / "summary.md"]
