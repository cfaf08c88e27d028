"""The charts of control-plane experiments (``k8stopo plot``, ``bench --plots``): each kind
declares its charts as data (:class:`k8stopo.controlplane.Chart`), and this one drawer
turns any of them into a figure from the rows alone.

Every point or bar is the median over the rows of its setup (repeats, resyncs); a dot
marks each row, so the spread stays visible. Setups that differ in anything but the
chart's own axes are told apart by run: a chart draws the rows it is given, so give it
one run (bench --plots does) or filter first.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import controlplane
from .controlplane import Chart, Panel

log = logging.getLogger("k8stopo.controlplane_plots")

COLORS = ("#08519c", "#e6550d", "#006d2c", "#6a51a3", "#a63603", "#525252")
DOT_COLOR = "#222222"


def control_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of control-plane kinds (the others are bench's, for plots.plot_all)."""
    if "kind" not in df.columns:
        return df.iloc[0:0]
    return df[df["kind"].isin(list(controlplane.KINDS))]


def charts(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Every chart of every kind among the rows, as PNG in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in control_rows(df).groupby("kind", sort=False):
        for chart in controlplane.kind(str(name)).charts:
            fig = figure(rows, chart)
            if fig is None:
                log.info("%s: no rows for chart %s", name, chart.stem)
                continue
            path = out_dir / f"{chart.stem}.png"
            fig.savefig(path, dpi=120)
            written.append(path)
    return written


def _selected(rows: pd.DataFrame, panel: Panel) -> pd.DataFrame:
    sel = rows[rows["metric"] == panel.metric]
    for column, value in panel.where:
        sel = sel[sel[column].map(_text) == value]
    return sel


def figure(rows: pd.DataFrame, chart: Chart) -> Figure | None:
    """The chart's panels side by side; None when none of them has rows."""
    if all(_selected(rows, p).empty for p in chart.panels):
        return None
    cols = min(3, len(chart.panels))
    rows_of_panels = -(-len(chart.panels) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.8 * rows_of_panels + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows_of_panels, cols, squeeze=False).ravel()
    for ax in axes[len(chart.panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, chart.panels):
        sel = _selected(rows, panel)
        (_bars if panel.style == "bars" else _lines)(ax, sel, panel)
        ax.set_title(panel.title, fontsize=9)
        ax.grid(alpha=0.3)
        if not sel.empty:
            ax.legend(fontsize=7, title=panel.by, title_fontsize=7)
    runs = ", ".join(sorted(rows["run_id"].astype(str).unique()))
    first = rows.iloc[0]
    fig.suptitle(f"{chart.title}\nrun {runs}; kernel {first['kernel']}, "
                 f"{first.get('cpu_model', '')}, commit {first.get('commit', '')}", fontsize=9)
    return fig


def _text(value: object) -> str:
    """A cell as its label: 1, not the 1.0 a column with empty cells is read as."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _series(sel: pd.DataFrame, panel: Panel) -> list[tuple[str, pd.DataFrame]]:
    return [(k, g) for k, g in sel.groupby(sel[panel.by].map(_text), sort=False)]


def _lines(ax: Axes, sel: pd.DataFrame, panel: Panel) -> None:
    for color, (label, group) in zip(COLORS * 4, _series(sel, panel)):
        x = pd.to_numeric(group[panel.x])
        y = group["value"].astype(float) * panel.scale
        medians = y.groupby(x).median().sort_index()
        ax.plot(medians.index, medians.values, marker="o", color=color, label=label)
        ax.plot(x, y, ".", color=DOT_COLOR, ms=3)
    if panel.log:
        ax.set(xscale="log", yscale="log")
    else:  # counts from 0 to thousands: linear near 0, logarithmic above 10
        ax.set_xscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
    xs = sorted(pd.to_numeric(sel[panel.x]).unique())
    ax.set_xticks(xs, [_text(float(x)) for x in xs], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel(panel.x)


def _bars(ax: Axes, sel: pd.DataFrame, panel: Panel) -> None:
    categories = list(dict.fromkeys(sel[panel.x].map(_text)))
    series = _series(sel, panel)
    width = 0.8 / max(len(series), 1)
    for i, (color, (label, group)) in enumerate(zip(COLORS * 4, series)):
        y = group["value"].astype(float) * panel.scale
        at = group[panel.x].map(_text).map(categories.index) + i * width
        medians = y.groupby(at).median()
        bars = ax.bar(medians.index, medians.values, width, color=color, alpha=0.85, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize=6)
        ax.plot(at, y, ".", color=DOT_COLOR, ms=3)
    ax.set_xticks([c + width * (len(series) - 1) / 2 for c in range(len(categories))],
                  categories, rotation=20, ha="right", fontsize=7)
    if panel.log:
        ax.set_yscale("log")
