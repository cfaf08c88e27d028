"""Published CNI benchmark figures beside ours, as ratios to each setup's own host baseline.

Published benchmarks ran on line-rate NICs with jumbo frames and offloads; this emulation is
CPU-bound on shared cores, so absolute Gbit/s say nothing across the two. What can be put side
by side is how much of its own host-to-host throughput a datapath keeps. The published rows are
only ever read here and turned into a separate table: they never enter a results frame.

The figures ship with the repository as ``results/published.csv`` (sources in
``results/published.md``). Sources name datapaths their own way; ``SAME_AS`` maps a published
name to the variant it measured (a published "calico" ran Calico's default pool, IP-in-IP).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import analysis

#: the figures shipped with the repository (a clone or an editable install has them)
DEFAULT = Path(__file__).resolve().parent.parent / "results" / "published.csv"
#: published cni name -> the k8stopo variant it measured
SAME_AS = {"calico": "calico-ipip"}

NEEDED = ("source", "url", "year", "hardware", "link_gbps", "mtu", "cni", "datapath",
          "scenario", "protocol", "streams", "metric", "value", "unit")
NUMERIC = ("year", "link_gbps", "mtu", "streams", "value")
RATIO_COLUMNS = ["source", "year", "link_gbps", "mtu", "cni", "datapath", "scenario", "streams",
                 "value_bps", "ratio_to_host"]
POD_SCENARIOS = ("pod-to-pod-cross-node", "pod-to-service")
COMPARED = "pod-to-pod-cross-node"
SOURCE_KEYS = ["source", "year"]


def load_published(path: Path) -> pd.DataFrame:
    """The published figures CSV. Any problem reading or using it is a ValueError of one line,
    so the command line can report it as bad input before it measures or writes anything."""
    try:
        pub = pd.read_csv(path)
    except (OSError, ValueError) as exc:  # missing, unreadable, empty, not a CSV, not UTF-8
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: cannot read published figures: {reason}") from None
    missing = [c for c in NEEDED if c not in pub.columns]
    if missing:
        raise ValueError(f"{path}: missing published column(s): {', '.join(missing)}")
    text = [c for c in NUMERIC if not pd.api.types.is_numeric_dtype(pub[c])]
    if text:
        raise ValueError(f"{path}: non-numeric published column(s): {', '.join(text)}")
    try:
        ratios(pub)  # refuse now what would otherwise fail only after a whole bench run
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return pub


def _tcp_throughput(pub: pd.DataFrame) -> pd.DataFrame:
    """TCP throughput rows with a known stream count, refusing a unit other than bit/s."""
    tcp = pub[(pub["protocol"] == "tcp") & (pub["metric"] == "throughput_bps")]
    tcp = tcp.assign(cni=tcp["cni"].replace(SAME_AS))
    wrong = sorted(set(tcp["unit"]) - {"bit/s"})
    if wrong:
        raise ValueError(f"published tcp throughput_bps rows in unit {', '.join(wrong)}, "
                         "expected bit/s")
    return tcp.dropna(subset=["streams"])


def ratios(pub: pd.DataFrame) -> pd.DataFrame:
    """Each published pod-to-pod-cross-node / pod-to-service TCP throughput over the
    host-to-host TCP throughput of ``cni == "host"`` in the same source, year and streams.

    Rows whose source has no such baseline (or whose streams are not stated) are dropped:
    a baseline from another source or stream count would be an invented one. Two baselines
    for the same source, year and streams are refused, as the divisor would be a guess.
    """
    tcp = _tcp_throughput(pub)
    keys = SOURCE_KEYS + ["streams"]
    base = tcp[(tcp["cni"] == "host") & (tcp["scenario"] == analysis.BASELINE)]
    twice = base[base.duplicated(keys, keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        raise ValueError(f"published host-to-host TCP baseline given more than once for "
                         f"{first['source']} {first['year']}, streams {first['streams']:g}")
    pods = tcp[tcp["scenario"].isin(POD_SCENARIOS)]
    paired = pods.merge(base[keys + ["value"]].rename(columns={"value": "baseline"}), on=keys)
    out = paired.assign(value_bps=paired["value"],
                        ratio_to_host=paired["value"] / paired["baseline"])
    return out[RATIO_COLUMNS].reset_index(drop=True)


def _short(source: str, year: float) -> str:
    """A source's first word and year (InfraBuilder 2024): enough to tell the series apart
    in a table cell, with the full title listed under the table."""
    return f"{source.split()[0].rstrip(':')} {_num(year)}"


def _num(value: float | None) -> str:
    """A number as the CSV means it (8950, not 8950.0), or says that the source gave none."""
    return "not stated" if value is None or pd.isna(value) else f"{float(value):g}"


def _published_cell(rows: pd.DataFrame) -> str:
    """One line per published ratio: the ratio, then where and how it was measured."""
    rows = rows.sort_values(["streams", "year", "mtu"], ascending=[True, False, True])
    return "<br>".join(
        f"{r.ratio_to_host:.2f} ({_short(r.source, r.year)}, {_num(r.link_gbps)} Gbit/s, "
        f"MTU {_num(r.mtu)}, streams {_num(r.streams)})" for r in rows.itertuples())


def comparison_markdown(ours: pd.DataFrame, pub: pd.DataFrame) -> str:
    """Our paired median ratio to host-to-host beside each published ratio for the same cni,
    pod-to-pod-cross-node TCP, one table row per our cni × setup (medians over different
    stream counts or MTUs would mix unlike things)."""
    theirs = ratios(pub)
    theirs = theirs[theirs["scenario"] == COMPARED]
    mine = analysis.tcp_ratios(ours)
    mine = mine[mine["scenario"] == COMPARED]
    tcp = _tcp_throughput(pub)
    listed = set(tcp[tcp["scenario"] == COMPARED]["cni"])
    unpaired = analysis.ordered(set(mine["cni"]) & (listed - set(theirs["cni"])), analysis.CNI_ORDER)
    note = ([f"Not compared: {', '.join(unpaired)}: published only by sources without a "
             "host-to-host TCP baseline for the same streams, so no ratio exists."]
            if unpaired else [])
    mine = mine[mine["cni"].isin(theirs["cni"])]
    if mine.empty:
        return "\n".join([f"No CNI of these results has a published {COMPARED} TCP ratio to "
                          "host-to-host.", *note]) + "\n"
    medians = pd.DataFrame([{"cni": cni, "setup": setup, **analysis.stats(group["ratio"])}
                            for (cni, setup), group in mine.groupby(["cni", "setup"], sort=False)])
    common, own = analysis.setup_labels(analysis.setups(mine))
    order = analysis.ordered(medians["cni"], analysis.CNI_ORDER)
    medians = medians.sort_values("cni", key=lambda c: c.map(order.index), kind="stable")
    used = theirs[theirs["cni"].isin(medians["cni"])]
    sources = pub.drop_duplicates(SOURCE_KEYS).merge(
        used[SOURCE_KEYS].drop_duplicates(), on=SOURCE_KEYS).sort_values("year", ascending=False)
    lines = [
        "Published figures come from the sources named below, measured on line-rate NICs with "
        "jumbo frames and offloads; ours come from a CPU-bound emulation on shared cores. So "
        "ratios to each setup's own host-to-host TCP throughput, not absolute Gbit/s, are what "
        "can be compared.",
        "",
        f"Our setup: {common}.",
        "",
        "| CNI | scenario | our setup | ours: ratio to host-to-host (paired, median [95% CI]) "
        "| repeats | published: ratio to host-to-host (source, link, MTU, streams) |",
        "|" + "---|" * 6,
    ]
    for r in medians.itertuples():
        ci = "" if pd.isna(r.ci_low) else f" [{r.ci_low:.2f}–{r.ci_high:.2f}]"
        lines.append(f"| {r.cni} | {COMPARED} | {own[r.setup]} | {r.median:.2f}{ci} | {r.n} | "
                     f"{_published_cell(used[used['cni'] == r.cni])} |")
    lines += ["", *note, *([""] if note else []), "Sources:"]
    lines += [f"- {_short(s.source, s.year)}: {s.source}; {s.hardware}; {s.url}"
              for s in sources.itertuples()]
    return "\n".join(lines) + "\n"
