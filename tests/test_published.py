"""Published figures as ratios to their own host baseline, and the table beside ours.

PUB below is a SYNTHETIC fixture with made-up round numbers: it exercises the ratio math and
is no published figure. The last tests read the repository's results/published.csv.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from k8stopo import analysis, plots, published, results

from synthetic import CNIS, fixture_rows, write_csv

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "results" / "published.csv"


def row(source: str, cni: str, scenario: str, streams: float, gbps: float,
        protocol: str = "tcp") -> dict[str, object]:
    return {"source": source, "url": f"https://example.invalid/{source}", "year": 2000,
            "hardware": "synthetic", "link_gbps": 10.0, "mtu": 9000.0, "cni": cni,
            "datapath": cni, "scenario": scenario, "protocol": protocol, "streams": streams,
            "metric": "throughput_bps", "value": gbps * 1e9, "unit": "bit/s", "note": ""}


PUB = pd.DataFrame([
    row("Lab A", "host", "host-to-host", 1, 10.0),
    row("Lab A", "host", "host-to-host", 8, 40.0),
    row("Lab A", "host", "host-to-host", 1, 4.0, protocol="udp"),  # not a TCP baseline
    row("Lab A", "flannel-vxlan", "pod-to-pod-cross-node", 1, 6.0),
    row("Lab A", "flannel-vxlan", "pod-to-pod-cross-node", 8, 30.0),
    row("Lab A", "flannel-vxlan", "pod-to-service", 1, 5.0),
    row("Lab A", "calico-bgp", "pod-to-pod-cross-node", 4, 9.0),  # no 4-stream baseline
    row("Lab B", "calico-bgp", "pod-to-pod-cross-node", 1, 7.0),  # Lab B has no baseline
])


def test_ratios_divide_by_same_source_and_streams() -> None:
    got = published.ratios(PUB)
    assert list(got.columns) == published.RATIO_COLUMNS
    keyed = got.set_index(["cni", "scenario", "streams"])["ratio_to_host"]
    assert keyed.to_dict() == pytest.approx({
        ("flannel-vxlan", "pod-to-pod-cross-node", 1): 6.0 / 10.0,
        ("flannel-vxlan", "pod-to-pod-cross-node", 8): 30.0 / 40.0,
        ("flannel-vxlan", "pod-to-service", 1): 5.0 / 10.0,
    })
    assert set(got["value_bps"]) == {6e9, 30e9, 5e9}


def test_source_without_host_baseline_yields_no_rows() -> None:
    assert published.ratios(PUB[PUB["source"] == "Lab B"]).empty
    assert "Lab B" not in set(published.ratios(PUB)["source"])


def test_two_baselines_for_the_same_streams_are_refused() -> None:
    twice = pd.concat([PUB, pd.DataFrame([row("Lab A", "host", "host-to-host", 1, 9.0)])])
    with pytest.raises(ValueError, match=r"baseline given more than once.*Lab A"):
        published.ratios(twice)


@pytest.mark.parametrize("content, message", [
    (None, "cannot read published figures"),
    ("", "cannot read published figures"),
    ("source,year\nx,2000\n", "missing published column"),
    (PUB.assign(value="fast").to_csv(index=False), "non-numeric published column.*value"),
])
def test_load_refuses_bad_files_in_one_line(tmp_path: Path, content: str | None,
                                            message: str) -> None:
    path = tmp_path / "pub.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        published.load_published(path)
    assert "\n" not in str(err.value) and "pub.csv" in str(err.value)


def test_comparison_without_matching_cni_says_so(tmp_path: Path) -> None:
    ours = results.load([write_csv(tmp_path / "r.csv", fixture_rows(("tcp",)))])
    md = published.comparison_markdown(ours, PUB[PUB["cni"] != "flannel-vxlan"])
    assert md.startswith("No CNI of these results") and "|" not in md


def test_shipped_csv_is_the_default_and_keeps_sources() -> None:
    assert published.DEFAULT == SHIPPED and SHIPPED.is_file()
    pub = published.load_published(SHIPPED)
    for col in ("source", "url", "hardware", "mtu", "streams"):
        assert pub["source"].notna().all() and col in pub.columns
    listed = (REPO / "results" / "published.md").read_text()
    for url in set(pub["url"]):
        assert url in listed  # every source is named with its address


def test_published_calico_pairs_with_calico_ipip(tmp_path: Path) -> None:
    pub = pd.DataFrame([row("Lab A", "host", "host-to-host", 1, 10.0),
                        row("Lab A", "calico", "pod-to-pod-cross-node", 1, 8.0)])
    assert list(published.ratios(pub)["cni"]) == ["calico-ipip"]
    rows = [dict(r, cni="calico-ipip") for r in fixture_rows(("tcp",)) if r["cni"] == "calico-bgp"]
    ours = results.load([write_csv(tmp_path / "r.csv", rows)])
    md = published.comparison_markdown(ours, pub)
    (line,) = [line for line in md.splitlines() if line.startswith("| calico-ipip |")]
    assert "0.80 (Lab 2000" in line


def test_real_csv_ratios_match_value_over_host_value() -> None:
    pub = published.load_published(SHIPPED)
    got = published.ratios(pub)
    assert not got.empty
    assert "host-to-host" not in set(got["scenario"]) and "host" not in set(got["cni"])
    src = pub[pub["source"].str.startswith("InfraBuilder") & (pub["year"] == 2024)]
    tcp = src[(src["protocol"] == "tcp") & (src["metric"] == "throughput_bps")]
    host = tcp[(tcp["cni"] == "host") & (tcp["scenario"] == "host-to-host")]
    host_by_streams = host.set_index("streams")["value"]
    flannel = tcp[(tcp["cni"] == "flannel-vxlan")
                  & tcp["scenario"].isin(published.POD_SCENARIOS)]
    assert not flannel.empty
    mine = got[got["source"].isin(src["source"]) & (got["year"] == 2024)
               & (got["cni"] == "flannel-vxlan")]
    assert len(mine) == len(flannel)
    for r in flannel.itertuples():
        hit = mine[(mine["scenario"] == r.scenario) & (mine["streams"] == r.streams)]
        assert hit["ratio_to_host"].item() == pytest.approx(r.value / host_by_streams[r.streams])


def test_real_csv_comparison_names_our_cnis(tmp_path: Path) -> None:
    ours = results.load([write_csv(tmp_path / "r.csv", fixture_rows(("tcp",)))])
    md = published.comparison_markdown(ours, published.load_published(SHIPPED))
    assert "CPU-bound emulation on shared cores" in md and "ratios" in md.splitlines()[0]
    for cni in CNIS:  # calico-bgp is published only without a baseline: named, not tabled
        assert cni in md
    (line,) = [l for l in md.splitlines() if l.startswith("| flannel-vxlan |")]
    ours_ratio = analysis.summary(ours).set_index(["cni", "scenario"]).loc[
        ("flannel-vxlan", "pod-to-pod-cross-node"), "tcp_ratio_to_host"]
    assert line.split(" | ")[3].startswith(f"{ours_ratio:.2f} [")
    assert "InfraBuilder 2024" in line
    plots.plot_all(ours, tmp_path / "without")
    plots.plot_all(ours, tmp_path / "with", published.load_published(SHIPPED))
    for name in ("summary.csv", "summary.md"):  # published rows never enter our numbers
        assert (tmp_path / "with" / name).read_text() == (tmp_path / "without" / name).read_text()


@pytest.mark.requires_root
def test_bench_published_without_plots_is_bad_input(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "k8stopo", "bench", "--cni", "host",
                           "--published", str(SHIPPED), "--out", str(tmp_path / "r.csv")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "--published needs --plots" in done.stderr
    assert not (tmp_path / "r.csv").exists()
