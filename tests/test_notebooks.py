"""The notebooks run headless against a small SYNTHETIC results tree, and against none.

The rows come from tests/synthetic.py (made-up values): they give every experiment family
its data, so a notebook that breaks (an API it calls changed, a typo in a cell) fails here.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import fixture_rows, scale_rows, write_csv

pytestmark = pytest.mark.slow  # executes every notebook

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "experiments" / "notebooks").glob("*.ipynb"))
FAMILIES = {"default.ipynb", "streams.ipynb", "mtu.ipynb", "offloads.ipynb", "rr_latency.ipynb"}
# and scale.ipynb, whose rows (k8stopo scale) are not bench's


def run_notebooks(results: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k8stopo", "notebooks",
                           "--results", str(results), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=1200)


def outputs(path: Path) -> tuple[int, str]:
    """Images drawn and text printed by an executed notebook."""
    nb = json.loads(path.read_text())
    images, text = 0, []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            images += "image/png" in out.get("data", {})
            text.append("".join(out.get("text", "")))
            text.append("".join(out.get("data", {}).get("text/markdown", "")))
    return images, "\n".join(text)


def results_tree(root: Path) -> None:
    """One CSV per experiment family, laid out as bench writes them."""
    write_csv(root / "default" / "a.csv", fixture_rows(("tcp", "icmp", "udp"),
                                                       extra={"experiment": "default"}))
    write_csv(root / "full" / "a.csv", fixture_rows(("tcp",), scale=1.1,
                                                    extra={"experiment": "full"}))
    write_csv(root / "streams" / "a.csv",
              fixture_rows(("tcp",), streams=1, extra={"experiment": "streams"})
              + fixture_rows(("tcp",), streams=4, scale=1.4, extra={"experiment": "streams"}))
    # no experiment column: found by its folder
    write_csv(root / "mtu" / "a.csv", fixture_rows(("tcp",), mtu=1500)
              + fixture_rows(("tcp",), mtu=9000, scale=2.0))
    write_csv(root / "offloads" / "a.csv",
              fixture_rows(("tcp",), extra={"experiment": "offloads", "offloads": "on"})
              + fixture_rows(("tcp",), scale=0.6, extra={"experiment": "offloads",
                                                         "offloads": "off"}))
    write_csv(root / "scale" / "bgp.csv", scale_rows(
        {(10, "mesh"): 2.0, (100, "mesh"): None, (10, "rr1"): 2.5, (100, "rr1"): 4.0}))
    write_csv(root / "rr-msgsize" / "a.csv",
              fixture_rows(("tcp_rr",), extra={"experiment": "rr-msgsize", "msg_size": 64})
              + fixture_rows(("tcp_rr",), scale=0.5,
                             extra={"experiment": "rr-msgsize", "msg_size": 16384}))


def test_every_family_has_a_notebook() -> None:
    assert {p.name for p in NOTEBOOKS} >= FAMILIES


def test_notebooks_in_git_carry_no_outputs() -> None:
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            assert not cell.get("outputs") and cell.get("execution_count") is None, path.name


def test_notebooks_redraw_every_family_from_the_csvs(tmp_path: Path) -> None:
    results_tree(tmp_path / "results")
    done = run_notebooks(tmp_path / "results", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    for name in FAMILIES:
        images, text = outputs(tmp_path / "out" / name)
        assert images >= 2, f"{name} drew {images} chart(s)"
        assert "rows from run(s)" in text and "yet" not in text
        assert "| CNI | scenario |" in text, f"{name} shows no summary table"
    # default.ipynb also draws `make bench-full`'s run (experiment "full"), apart from the default's
    default = outputs(tmp_path / "out" / "default.ipynb")[1]
    assert default.count("| CNI | scenario |") == 2
    # the verdict's tiers and pair counts, never a rank
    assert "'undecided':" in default and "tier" in default and "- tier a: " in default
    images, text = outputs(tmp_path / "out" / "scale.ipynb")
    assert images == 1 and "bgp: 7 rows from run(s)" in text
    assert "| 10 | 0 | rr1 | 2.5 | 1.2 |" in text  # build and converge medians, in s
    assert "failed: 100 nodes × 0 pods, mesh: BGP did not converge in 90s" in text


def test_notebooks_without_results_say_so_and_run(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    done = run_notebooks(tmp_path / "results", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    for name in [*FAMILIES, "scale.ipynb"]:
        images, text = outputs(tmp_path / "out" / name)
        assert images == 0 and "results under" in text and "yet" in text


def test_a_broken_notebook_fails_the_run(tmp_path: Path) -> None:
    nb = json.loads(NOTEBOOKS[0].read_text())
    nb["cells"].append({"cell_type": "code", "id": "broken", "metadata": {}, "outputs": [],
                        "execution_count": None, "source": "plots.no_such_chart(df)"})
    broken = tmp_path / "broken.ipynb"
    broken.write_text(json.dumps(nb))
    (tmp_path / "results").mkdir()
    done = subprocess.run([sys.executable, "-m", "k8stopo", "notebooks",
                           "--results", str(tmp_path / "results"), str(broken)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 1 and "broken.ipynb: FAILED" in done.stderr
    assert "no_such_chart" in done.stderr
