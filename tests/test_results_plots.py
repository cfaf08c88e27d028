"""Results CSV writing/reading and the charts and summary made from it.

All rows here are a SYNTHETIC fixture with made-up, deliberately irregular values:
they exercise the code paths and are not measurements of anything.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

from k8stopo import plots, results

RUN = "20261125T000000Z-0000"
CNIS = ("flannel-vxlan", "calico-bgp")
SCENARIOS = ("host-to-host", "pod-to-pod-same-node", "pod-to-pod-cross-node")
# (cni, scenario, repeat) -> TCP Gbit/s; host-to-host differs per repeat so that pairing matters
TCP_GBPS = {
    ("flannel-vxlan", "host-to-host", 0): 20.0, ("flannel-vxlan", "host-to-host", 1): 16.0,
    ("flannel-vxlan", "pod-to-pod-same-node", 0): 18.0,
    ("flannel-vxlan", "pod-to-pod-same-node", 1): 15.2,
    ("flannel-vxlan", "pod-to-pod-cross-node", 0): 9.0,
    ("flannel-vxlan", "pod-to-pod-cross-node", 1): 8.8,
    ("calico-bgp", "host-to-host", 0): 19.0, ("calico-bgp", "host-to-host", 1): 22.0,
    ("calico-bgp", "pod-to-pod-same-node", 0): 17.1,
    ("calico-bgp", "pod-to-pod-same-node", 1): 20.9,
    ("calico-bgp", "pod-to-pod-cross-node", 0): 17.5,
    ("calico-bgp", "pod-to-pod-cross-node", 1): 18.7,
}


class Sample(NamedTuple):
    metric: str
    value: float
    unit: str


def context(cni: str, scenario: str, protocol: str, repeat: int, run_id: str = RUN) -> results.Context:
    return results.Context(
        run_id=run_id, cni=cni, scenario=scenario, protocol=protocol, repeat=repeat, nodes=2,
        pods_per_node=2, streams=1, duration_s=10.0, mtu=1500, kernel="6.1.0-synthetic",
        k8stopo_version="0.0.test", client="n1", server="n2", client_ip="172.20.0.1",
        server_ip="172.20.0.2", raw_file=f"raw/{cni}-{scenario}-{protocol}-{repeat}.json")


def fixture_rows(protocols: tuple[str, ...] = ("tcp", "icmp", "udp")) -> list[dict[str, object]]:
    """Synthetic rows: every cni × scenario × repeat, for the protocols asked for."""
    out: list[dict[str, object]] = []
    for (cni, scenario, repeat), gbps in TCP_GBPS.items():
        samples = {
            "tcp": [Sample("throughput_bps", gbps * 1e9, "bit/s"),
                    Sample("retransmits", float(repeat), "count")],
            "icmp": [Sample("rtt_p50_ms", gbps / 200, "ms"), Sample("rtt_p99_ms", gbps / 100, "ms")],
            "udp": [Sample("throughput_bps", gbps * 0.3e9, "bit/s"),
                    Sample("loss_pct", gbps / 10, "%")],
        }
        for protocol in protocols:
            out += results.rows(context(cni, scenario, protocol, repeat),
                                f"2026-11-25T00:0{repeat}:00Z", samples[protocol])
    return out


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with results.CsvSink(path) as sink:
        sink.write(rows)
    return path


@pytest.fixture
def df(tmp_path: Path) -> pd.DataFrame:
    return results.load([write_csv(tmp_path / "r.csv", fixture_rows())])


def test_rows_follow_columns() -> None:
    got = results.rows(context("host", "host-to-host", "tcp", 0), "2026-11-25T00:00:00Z",
                       [Sample("throughput_bps", 1.5e9, "bit/s"), Sample("retransmits", 3, "count")])
    assert [tuple(r) for r in got] == [results.COLUMNS] * 2
    assert (got[0]["metric"], got[0]["value"], got[0]["unit"]) == ("throughput_bps", 1.5e9, "bit/s")
    assert got[1]["started_at"] == "2026-11-25T00:00:00Z" and got[1]["repeat"] == 0


def test_sink_writes_header_once_and_appends_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "r.csv"  # parents are created
    rows = fixture_rows(("tcp",))
    write_csv(path, rows[:5])
    write_csv(path, rows[5:])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(results.COLUMNS)
    assert lines.count(lines[0]) == 1
    assert len(results.load([path])) == len(rows)


def test_sink_writes_header_into_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.touch()
    write_csv(path, fixture_rows(("tcp",))[:1])
    assert path.read_text().splitlines()[0] == ",".join(results.COLUMNS)


def test_sink_refuses_other_header(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b,c\n1,2,3\n")
    for attempt in (results.check_appendable, results.CsvSink):
        with pytest.raises(ValueError, match="other.csv.*refusing") as err:
            attempt(path)
        assert "\n" not in str(err.value)
    assert path.read_text() == "a,b,c\n1,2,3\n"  # untouched


def test_check_appendable_accepts_new_and_own_files(tmp_path: Path) -> None:
    results.check_appendable(tmp_path / "new.csv")
    results.check_appendable(write_csv(tmp_path / "own.csv", fixture_rows(("tcp",))))
    assert not (tmp_path / "new.csv").exists()  # checking creates nothing
    with pytest.raises(ValueError, match="directory"):
        results.check_appendable(tmp_path)


def test_sink_refuses_reordered_header(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(",".join(reversed(results.COLUMNS)) + "\n")
    with pytest.raises(ValueError, match="another order"):
        results.CsvSink(path)


def test_sink_refuses_rows_with_wrong_columns(tmp_path: Path) -> None:
    row = dict(fixture_rows(("tcp",))[0], extra=1)
    with results.CsvSink(tmp_path / "r.csv") as sink, pytest.raises(ValueError, match="extra"):
        sink.write([row])


def test_sink_survives_reopen_after_interrupted_run(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    rows = fixture_rows(("tcp",))
    sink = results.CsvSink(path)
    sink.write(rows[:3])
    # the run dies here without close(), in the middle of writing a fourth row
    with path.open("a") as f:
        f.write("20261125T000000Z-0000,2026-11-25T00:00:00Z,flannel-vxl")
    with results.CsvSink(path) as again:
        again.write(rows[3:6])
    sink.close()
    back = results.load([path])
    assert len(back) == 6
    assert list(back["value"]) == [r["value"] for r in rows[:6]]


def test_load_rejects_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    frame = pd.DataFrame(fixture_rows(("tcp",))).drop(columns=["kernel", "mtu"])
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="r.csv: missing required column.*mtu, kernel"):
        results.load([path])


def test_load_concatenates(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", fixture_rows(("tcp",)))
    b = write_csv(tmp_path / "b.csv", fixture_rows(("icmp",)))
    assert set(results.load([a, b])["protocol"]) == {"tcp", "icmp"}


def test_run_id_and_timestamp_format() -> None:
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", results.new_run_id())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", results.utc_now())


def test_paired_normalisation_divides_by_same_run_and_repeat(df: pd.DataFrame) -> None:
    # a second run on the same variants whose host-to-host is twice as fast: its ratios
    # must use its own baseline, not the first run's
    other = df.assign(run_id="run-2")
    faster_host = (other["scenario"] == "host-to-host") & (other["protocol"] == "tcp")
    other.loc[faster_host, "value"] *= 2
    ratios = plots.tcp_ratios(pd.concat([df, other], ignore_index=True))
    assert len(ratios) == 2 * len(TCP_GBPS)
    for r in ratios.itertuples():
        host = TCP_GBPS[(r.cni, "host-to-host", r.repeat)] * (2 if r.run_id == "run-2" else 1)
        own = host if r.scenario == "host-to-host" else TCP_GBPS[(r.cni, r.scenario, r.repeat)]
        assert r.ratio == pytest.approx(own / host, rel=1e-12)


def test_summary_ratio_is_median_of_paired_ratios(df: pd.DataFrame) -> None:
    table = plots.summary(df).set_index(["cni", "scenario"])
    for cni in CNIS:
        for scenario in SCENARIOS:
            paired = [TCP_GBPS[(cni, scenario, r)] / TCP_GBPS[(cni, "host-to-host", r)]
                      for r in (0, 1)]
            row = table.loc[(cni, scenario)]
            assert row["tcp_ratio_to_host"] == pytest.approx(sum(paired) / 2)
            assert row["tcp_gbps_min"] == pytest.approx(min(TCP_GBPS[(cni, scenario, r)]
                                                            for r in (0, 1)))
            assert row["rtt_p50_us"] == pytest.approx(
                sum(TCP_GBPS[(cni, scenario, r)] / 200 * 1000 for r in (0, 1)) / 2)
            assert row["repeats"] == 2
    assert list(table.index.get_level_values("cni").unique()) == ["flannel-vxlan", "calico-bgp"]


def test_one_csv_given_twice_is_an_error(df: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="more than once"):
        plots.summary(pd.concat([df, df]))


def test_plot_all_writes_every_chart(df: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    written = plots.plot_all(df, out)
    stems = ("tcp_throughput_normalised", "tcp_throughput", "rtt", "udp")
    expected = {out / f"{s}.{e}" for s in stems for e in ("png", "svg")}
    assert set(written) == expected | {out / "summary.csv", out / "summary.md"}
    for path in expected:
        assert path.stat().st_size > 0
    for stem in stems:
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(pd.read_csv(out / "summary.csv")["cni"]) == set(CNIS)


def test_plot_all_skips_charts_without_data(tmp_path: Path) -> None:
    df = results.load([write_csv(tmp_path / "r.csv", fixture_rows(("tcp",)))])
    out = tmp_path / "plots"
    written = {p.name for p in plots.plot_all(df, out)}
    assert written == {"tcp_throughput_normalised.png", "tcp_throughput_normalised.svg",
                       "tcp_throughput.png", "tcp_throughput.svg", "summary.csv", "summary.md"}
    assert not (out / "rtt.png").exists() and not (out / "udp.png").exists()


def test_plot_all_without_tcp_draws_only_rtt(tmp_path: Path) -> None:
    df = results.load([write_csv(tmp_path / "r.csv", fixture_rows(("icmp",)))])
    written = {p.name for p in plots.plot_all(df, tmp_path / "plots")}
    assert written == {"rtt.png", "rtt.svg", "summary.csv", "summary.md"}


def test_summary_markdown_names_every_cni_and_setup(df: pd.DataFrame) -> None:
    md = plots.summary_markdown(df)
    header, _, table_head, rule, *body = md.splitlines()
    for cni in CNIS:
        assert any(line.startswith(f"| {cni} |") for line in body)
    assert len(body) == len(CNIS) * len(SCENARIOS)
    assert "kernel 6.1.0-synthetic" in header and RUN in header
    assert "2026-11-25T00:00:00Z to 2026-11-25T00:01:00Z" in header
    assert "nodes 2" in header and "duration 10 s" in header and "repeats 2" in header
    assert table_head.count("|") == rule.count("|")
