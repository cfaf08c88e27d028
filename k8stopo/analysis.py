"""What the results say: setups, paired ratios, medians with confidence intervals.

Pandas and numpy only, so ``k8stopo plot``, the published comparison and the notebooks
all draw from the same numbers, on any machine that has the CSVs.

- **Setup.** Rows are only ever summarised together when every parameter of their
  measurement is equal: each column that is neither run identity, measured value nor
  environment (``IDENTITY``, ``ENVIRONMENT``) is a parameter, including any column a
  later version adds. Parameters that do not change a protocol's measurement (``APPLIES``:
  ping has no streams, TCP no UDP offered rate) are left out of that protocol's setup.
  ``mtu`` is the path MTU of the row, which depends on the variant, so the setup holds the
  underlay MTU instead (``underlay_mtu``, recorded or derived).
- **Pairing.** TCP throughput is normalised by the host-to-host TCP throughput of the
  same run, variant, repeat and setup, measured minutes apart on the same emulated
  cluster; that cancels the drift of a shared machine (about ±15% minute to minute).
- **Statistics.** Per setup × cni × scenario × protocol × metric: the median over
  repeats, a 95% bootstrap confidence interval of that median (percentile method,
  ``RESAMPLES`` resamples, fixed seed: the same rows give the same interval), and the
  coefficient of variation (sample standard deviation over mean). With 3 repeats the
  interval cannot be wider than min–max; more repeats are what narrow a claim.
- **Failures.** A measurement that failed is one row of metric ``failed`` (value 1, the
  reason in ``error``): never a value. :func:`describe` and every chart leave those rows
  out; :func:`failures` counts them, and :func:`summary` shows the count (``failed``).
  Rows measured under a fault (``fault``) are a setup of their own.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .results import FAILED  # a count, never a value
from .spec import SCENARIOS, SPEC_VARIANTS

BASELINE = "host-to-host"
CROSS_NODE = "pod-to-pod-cross-node"
CNI_ORDER: tuple[str, ...] = SPEC_VARIANTS
SCENARIO_ORDER: tuple[str, ...] = SCENARIOS + ("pod-to-hostport",)  # SCENARIOS has the others
#: which measurement a row is, and what was measured: never a setup parameter
IDENTITY = frozenset({
    "run_id", "started_at", "cni", "scenario", "protocol", "metric", "value", "unit", "repeat",
    "client", "server", "client_ip", "server_ip", "raw_file", "experiment", "setup", "error"})
#: where and with what it was measured: shown in subtitles, never splits a setup
ENVIRONMENT = frozenset({
    "kernel", "k8stopo_version", "cpu_model", "iptables_mode", "commit", "command", "hostname",
    "python"})
#: per-row consequences of the setup, not parameters: ``mtu`` is the path MTU (a VXLAN pod's
#: 1450 on a 1500 underlay), so the setup uses ``underlay_mtu`` instead (see with_setup)
DERIVED = frozenset({"mtu"})
#: parameters that change only some protocols' measurements (others: every protocol)
APPLIES: dict[str, frozenset[str]] = {
    "streams": frozenset({"tcp", "udp"}),
    "udp_bandwidth": frozenset({"udp"}),
    "udp_length": frozenset({"udp"}),
    "msg_size": frozenset({"tcp_rr"}),
}
PAIR = ["setup", "run_id", "cni", "repeat"]  # same cluster, same parameters, minutes apart
KEYS = ["setup", "cni", "scenario"]
STAT_KEYS = KEYS + ["protocol", "metric", "unit"]
CV_LIMIT = 0.05
CONFIDENCE = 0.95
RESAMPLES = 4000
SEED = 20261127


def ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Known names in their fixed order, then any others alphabetically."""
    present = set(values)
    return [v for v in preferred if v in present] + sorted(present - set(preferred))


def fmt_value(value: object) -> str:
    """A parameter as the CSV means it: 1500, not 1500.0; 0.5 stays 0.5."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


#: options of some variants only (empty on the others' rows): they describe the variant, so
#: they split setups only when a variant was measured with more than one value of them
VARIANT_OPTIONS = frozenset({"bgp_mode", "ipip_mode"})


def parameters(df: pd.DataFrame) -> list[str]:
    """The setup parameter columns present (with at least one value), in column order."""
    def splits(c: str) -> bool:
        if not df[c].notna().any():
            return False
        return c not in VARIANT_OPTIONS or bool((df.groupby("cni")[c].nunique() > 1).any())
    return [c for c in df.columns if c not in IDENTITY | ENVIRONMENT | DERIVED and splits(c)]


def underlay_mtu(df: pd.DataFrame) -> pd.Series:
    """The underlay MTU of each row, for CSVs that record only the path MTU.

    Host-to-host rows run over the underlay, so their MTUs in a run are its underlay
    MTUs; any other row belongs to the smallest of them that its path MTU fits under
    (encapsulation takes tens of bytes, sweeps differ by far more). A run without a
    host-to-host row keeps its path MTU.
    """
    host = df[df["scenario"] == BASELINE].groupby("run_id")["mtu"].agg(
        lambda m: sorted(set(m.dropna())))

    def one(run_id: object, mtu: float) -> float:
        fits = [u for u in host.get(run_id, []) if u >= mtu]
        return min(fits) if fits else mtu

    return pd.Series([one(r, m) for r, m in zip(df["run_id"], df["mtu"])], index=df.index,
                     dtype="float")


def with_setup(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a ``setup`` column: ``name=value`` of every parameter that applies
    to the row's protocol and is known for it, e.g. ``nodes=2, …, streams=4, mtu=9000``.

    Rows with equal ``setup`` were measured alike; a missing value (a column an older
    CSV lacks) is left out, so an unknown parameter never matches a known one.
    """
    out = df.copy()
    if "underlay_mtu" not in out.columns:  # beside mtu, so setups read in a natural order
        derived = underlay_mtu(out) if not out.empty else pd.Series(dtype="float")
        out.insert(list(out.columns).index("mtu") + 1, "underlay_mtu", derived)
    if out.empty:
        return out.assign(setup=pd.Series(dtype="str"))
    parts = []
    for col in parameters(out):
        applies = out["protocol"].isin(APPLIES[col]) if col in APPLIES else True
        part = (col + "=" + out[col].map(fmt_value)).where(out[col].notna() & applies, "")
        parts.append(part)
    if not parts:
        return out.assign(setup="")
    joined = pd.concat(parts, axis=1).apply(lambda r: ", ".join(p for p in r if p), axis=1)
    return out.assign(setup=joined.astype("str"))


def _ensure_setup(df: pd.DataFrame) -> pd.DataFrame:
    return df if "setup" in df.columns else with_setup(df)


def setups(df: pd.DataFrame) -> list[str]:
    """The distinct setups, in order of their parameters (numbers numerically)."""
    df = _ensure_setup(df)
    if df.empty:
        return []
    params = parameters(df)
    first = df.sort_values(params, kind="stable", na_position="first") if params else df
    return list(dict.fromkeys(first["setup"]))


def _parts(setup: str) -> frozenset[str]:
    return frozenset(p for p in setup.split(", ") if p)


def full_setups(df: pd.DataFrame) -> dict[str, list[str]]:
    """Each setup present -> the complete setups its rows belong beside, in setup order.

    A protocol's setup leaves out what does not apply to it (ping's has no streams), so
    one ping setup serves every streams setup of the same run parameters: a summary row
    of a complete setup shows the RTT measured under its other parameters. A setup that
    lacks a parameter which does apply to its rows (an older CSV) serves nothing else.
    """
    df = _ensure_setup(df)
    names = setups(df)
    protocols = {str(k): set(v) for k, v in df.groupby("setup")["protocol"]}

    def serves(small: str, big: str) -> bool:
        extra = {p.split("=", 1)[0] for p in _parts(big) - _parts(small)}
        return _parts(small) < _parts(big) and all(
            k in APPLIES and not protocols[small] & APPLIES[k] for k in extra)

    def homes(setup: str) -> list[str]:
        above = [o for o in names if serves(setup, o)]
        return [setup] if not above else [h for o in above for h in homes(o)]

    order = {s: i for i, s in enumerate(names)}
    return {s: sorted(set(homes(s)), key=order.__getitem__) for s in names}


def setup_labels(names: Sequence[str]) -> tuple[str, dict[str, str]]:
    """What the given setups share, and for each what sets it apart (``streams=4``)."""
    split = {s: [p for p in s.split(", ") if p] for s in names}
    common = [p for p in (split[names[0]] if names else []) if all(p in v for v in split.values())]
    own = {s: ", ".join(p for p in parts if p not in common) or "the common setup"
           for s, parts in split.items()}
    return ", ".join(common), own


def metric_rows(df: pd.DataFrame, protocol: str, metric: str,
                unit: str | None = None) -> pd.DataFrame:
    """The rows of one metric, refusing a unit other than ``unit`` (converting it would lie),
    mixed units, and a measurement present twice (one CSV passed twice would skew medians)."""
    df = _ensure_setup(df)
    sel = df[(df["protocol"] == protocol) & (df["metric"] == metric)]
    units = sorted(set(sel["unit"].dropna()))
    if unit is not None and set(units) - {unit}:
        raise ValueError(f"{protocol} {metric} rows in unit {', '.join(units)}, expected {unit}")
    if len(units) > 1:
        raise ValueError(f"{protocol} {metric} rows in several units: {', '.join(units)}")
    same = PAIR + ["scenario", "started_at", "raw_file"]
    dup = sel[sel.duplicated(same, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise ValueError(f"{protocol} {metric} measured more than once for run {first['run_id']}, "
                         f"{first['cni']}, {first['scenario']}, repeat {first['repeat']} "
                         "(the same CSV given twice?)")
    return sel


def tcp_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Each TCP throughput over the host-to-host TCP throughput of the same setup, run,
    cni and repeat (column ``ratio``); host-to-host rows get 1.0 by definition.

    Measurements without such a baseline are left out, since any other divisor would
    bring back the drift this pairing cancels; two baselines for one pair are refused.
    """
    tcp = metric_rows(df, "tcp", "throughput_bps", "bit/s")
    base = tcp[tcp["scenario"] == BASELINE][PAIR + ["value"]]
    twice = base[base.duplicated(PAIR, keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        raise ValueError(f"two host-to-host TCP baselines for run {first['run_id']}, "
                         f"{first['cni']}, repeat {first['repeat']} in setup {first['setup']}")
    paired = tcp.merge(base.rename(columns={"value": "baseline"}), on=PAIR, how="inner")
    return paired.assign(ratio=paired["value"] / paired["baseline"])


def measured(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that hold a measured value: all but the ``failed`` ones."""
    return df[df["metric"] != FAILED]


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Failed measurements per setup × cni × scenario × protocol: ``failed`` (how many)
    and ``error`` (the most frequent reason)."""
    df = _ensure_setup(df)
    cols = STAT_KEYS[:-2] + ["failed", "error"]
    sel = df[df["metric"] == FAILED]
    if sel.empty:
        return pd.DataFrame(columns=cols)
    reasons = sel["error"] if "error" in sel.columns else pd.Series("", index=sel.index)
    sel = sel.assign(error=reasons.fillna(""))
    rows = [{**dict(zip(STAT_KEYS[:-2], key)), "failed": len(group),
             "error": group["error"].mode().iloc[0]}
            for key, group in sel.groupby(STAT_KEYS[:-2], sort=False, dropna=False)]
    return _sorted(pd.DataFrame(rows, columns=cols), setups(df))


def stats(values: Sequence[float] | pd.Series) -> dict[str, float]:
    """n, median, 95% bootstrap CI of the median (fixed seed) and coefficient of variation.

    One value has no interval and no spread (NaN), rather than a fake zero-width one.
    """
    vals = np.sort(np.asarray(values, dtype=float))
    vals = vals[~np.isnan(vals)]
    n = len(vals)
    if n == 0:
        return {"n": 0, "median": np.nan, "ci_low": np.nan, "ci_high": np.nan, "cv": np.nan}
    median = float(np.median(vals))
    if n == 1:
        return {"n": 1, "median": median, "ci_low": np.nan, "ci_high": np.nan, "cv": np.nan}
    rng = np.random.default_rng(SEED)
    boot = np.median(vals[rng.integers(0, n, size=(RESAMPLES, n))], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    mean = float(vals.mean())
    cv = float(vals.std(ddof=1) / abs(mean)) if mean else np.nan
    return {"n": n, "median": median, "ci_low": float(low), "ci_high": float(high), "cv": cv}


def _sorted(table: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Rows by setup order, then variants in CNI_ORDER and scenarios in SPEC order."""
    ranks = {"setup": order, "cni": ordered(table["cni"], CNI_ORDER),
             "scenario": ordered(table["scenario"], SCENARIO_ORDER)}
    keys = [k for k in ranks if k in table.columns]
    return table.sort_values(keys, key=lambda col: col.map(list(ranks[str(col.name)]).index),
                             kind="stable", ignore_index=True)


def describe(df: pd.DataFrame) -> pd.DataFrame:
    """Statistics of every metric per setup × cni × scenario × protocol × metric, plus the
    paired TCP ratio to host-to-host as protocol ``tcp``, metric ``ratio_to_host``."""
    df = _ensure_setup(df)
    order = setups(df)
    df = measured(df)
    cols = STAT_KEYS + ["n", "median", "ci_low", "ci_high", "cv"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    for protocol, metric in df[["protocol", "metric"]].drop_duplicates().itertuples(index=False):
        metric_rows(df, protocol, metric)  # refuses mixed units and duplicates
    frames = [df[STAT_KEYS + ["value"]]]
    ratios = tcp_ratios(df) if ((df["protocol"] == "tcp")
                                & (df["metric"] == "throughput_bps")).any() else None
    if ratios is not None and not ratios.empty:
        frames.append(ratios.assign(metric="ratio_to_host", unit="ratio",
                                    value=ratios["ratio"])[STAT_KEYS + ["value"]])
    long = pd.concat(frames, ignore_index=True)
    rows = [{**dict(zip(STAT_KEYS, key)), **stats(group["value"])}
            for key, group in long.groupby(STAT_KEYS, sort=False, dropna=False)]
    return _sorted(pd.DataFrame(rows, columns=cols), order)


def noisy(table: pd.DataFrame, limit: float = CV_LIMIT) -> list[str]:
    """One line per charted statistic (SUMMARY_METRICS: not retransmit counts, say) whose
    repeats vary by more than ``limit`` (the verdict's margin), from :func:`describe`: the
    detail behind the one count a run prints (summary.md lists them, ``-v`` logs them)."""
    charted = {(p, m) for p, m, _, _ in SUMMARY_METRICS}
    keys = pd.Series(list(zip(table["protocol"], table["metric"])), index=table.index)
    rows = table[(table["cv"] > limit) & keys.isin(charted)]
    return [f"CV {r.cv:.1%} > {limit:.0%}: {r.cni} {r.scenario} {r.protocol} {r.metric} "
            f"over {r.n} repeats ({r.setup})" for r in rows.itertuples()]


# (protocol, metric, summary column prefix, factor from the CSV unit to the unit shown)
SUMMARY_METRICS = (
    ("tcp", "throughput_bps", "tcp_gbps", 1e-9),
    ("tcp", "ratio_to_host", "tcp_ratio_to_host", 1.0),
    ("icmp", "rtt_p50_ms", "rtt_p50_us", 1e3),
    ("icmp", "rtt_p99_ms", "rtt_p99_us", 1e3),
    ("udp", "throughput_bps", "udp_gbps", 1e-9),
    ("udp", "loss_pct", "udp_loss_pct", 1.0),
    ("tcp_rr", "latency_p50_us", "rr_p50_us", 1.0),
    ("tcp_rr", "latency_p99_us", "rr_p99_us", 1.0),
    ("tcp", "cpu_s_per_gbit", "cpu_s_per_gbit", 1.0),
)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per setup × cni × scenario: for each metric present, ``<name>`` (the median),
    ``<name>_ci_low``, ``<name>_ci_high`` and ``<name>_cv``, in the units shown
    (Gbit/s, µs, %); ``repeats`` is the most repeats behind any of them; ``failed`` the
    failed measurements (only when there are any: a setup may then have no value)."""
    homes = full_setups(df)
    table = describe(df)
    table = table.assign(setup=table["setup"].map(homes)).explode("setup")
    failed = failures(df)
    failed = failed.assign(setup=failed["setup"].map(homes)).explode("setup")
    out = pd.concat([table[KEYS], failed[KEYS]]).drop_duplicates().set_index(KEYS)
    for protocol, metric, name, factor in SUMMARY_METRICS:
        sel = table[(table["protocol"] == protocol) & (table["metric"] == metric)].set_index(KEYS)
        if sel.empty:
            continue
        out[name] = sel["median"] * factor
        out[f"{name}_ci_low"] = sel["ci_low"] * factor
        out[f"{name}_ci_high"] = sel["ci_high"] * factor
        out[f"{name}_cv"] = sel["cv"]
    out["repeats"] = table.groupby(KEYS, sort=False)["n"].max()
    out["repeats"] = out["repeats"].fillna(0).astype(int)
    if not failed.empty:
        out["failed"] = failed.groupby(KEYS, sort=False)["failed"].sum()
        out["failed"] = out["failed"].fillna(0).astype(int)
    order = list(dict.fromkeys(f for fs in homes.values() for f in fs))
    return _sorted(out.reset_index(), order)


#: The classic Calico / Flannel / Weave write-up's order, BGP ≈ host-gw > IP-in-IP ≈ VXLAN >
#: userspace UDP, as (tier, datapath family) per variant: a seed to compare with, not data.
CLASSIC_ORDER = "BGP ≈ host-gw > IP-in-IP ≈ VXLAN > userspace UDP"
CLASSIC_TIER: dict[str, tuple[int, str]] = {
    "calico-bgp": (1, "BGP"), "flannel-host-gw": (1, "host-gw"),
    "calico-ipip": (2, "IP-in-IP"), "flannel-vxlan": (2, "VXLAN"),
    "calico-vxlan": (2, "VXLAN"), "weave-fastdp": (2, "VXLAN"), "docker-overlay": (2, "VXLAN"),
    "flannel-udp": (3, "userspace UDP"), "weave-sleeve": (3, "userspace UDP"),
}
