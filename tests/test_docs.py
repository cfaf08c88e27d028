"""The README and docs/ say what the code and results/ hold.

The README is a front door: short, every link into docs/ and results/ resolves (anchors
included), its test command is CI's, and the run it quotes is the run its CSV recorded.
SPEC is the contract: its tables name exactly the variants and scenarios the code knows and
its command list every subcommand.
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import pytest

from k8stopo.spec import SCENARIOS, SPEC_VARIANTS

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
SPEC = REPO / "docs" / "SPEC.md"
#: a Markdown link or image target that is a path in the repository (not a URL)
LINK = re.compile(r"!?\[[^\]]*\]\((?!https?://|mailto:)([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


def links(path: Path) -> list[tuple[Path, str]]:
    """(target file, anchor or "") of every repository link in ``path``."""
    out = []
    for target in LINK.findall(path.read_text()):
        file, _, anchor = target.partition("#")
        out.append(((path.parent / file).resolve() if file else path, anchor))
    return out


def section(text: str, heading: str) -> str:
    """The body of a ``## heading`` section, up to the next ``## ``."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def table_names(text: str) -> list[str]:
    """The first column of a Markdown table's rows, backquotes removed."""
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [row.split("|")[1].strip().strip("`") for row in rows]


def test_readme_is_a_front_door_under_200_lines() -> None:
    assert len(README.read_text().splitlines()) < 200


def test_readme_names_the_test_command_ci_runs() -> None:
    """CI runs `.ci/run`, which runs `make test`: the README's test command must be that."""
    assert "make test" in (REPO / ".ci" / "run").read_text()
    tests = section(README.read_text(), "Tests")
    assert "    make test\n" in tests


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    """Every relative link (docs, charts, results files) points at a file that exists, and
    an anchor at a heading of that file."""
    found = links(page)
    if page == README:
        assert any(t.parent == REPO / "docs" for t, _ in found), "README links no docs/*.md"
    for target, anchor in found:
        assert target.exists(), f"{page.name}: link to missing {target.relative_to(REPO)}"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: no heading #{anchor} in {target.name}"


def test_readme_links_every_docs_page() -> None:
    linked = {t for t, _ in links(README)}
    assert set(DOCS) <= linked, sorted(p.name for p in set(DOCS) - linked)


def test_readme_quotes_the_run_its_csv_recorded() -> None:
    """The README names the CSV its figures come from, with a date and a commit: they are that
    CSV's own (its ``started_at`` and ``commit`` columns)."""
    text = README.read_text()
    path = re.search(r"`(results/[^`]+\.csv)`", text)
    stated = re.search(r"(\d{4}-\d\d-\d\d), commit\s+([0-9a-f]{7,40}(?:-dirty)?)", text)
    assert path and stated, "the README must name its results CSV, their date and commit"
    with open(REPO / path.group(1), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["commit"] for r in rows} == {stated.group(2)}
    assert {r["started_at"][:10] for r in rows} == {stated.group(1)}


def test_findings_cite_files_that_exist() -> None:
    """Every results/ path docs/findings.md names exists ({a,b} lists expanded)."""
    text = (REPO / "docs" / "findings.md").read_text()
    cited = re.findall(r"`(results/[^`\s]+)`", text)
    assert cited
    for path in cited:
        brace = re.search(r"\{([^}]*)\}", path)
        expanded = ([path[:brace.start()] + part + path[brace.end():]
                     for part in brace.group(1).split(",")] if brace else [path])
        for one in expanded:
            assert (REPO / one).exists(), f"findings.md cites missing {one}"


def test_variant_tables_name_exactly_the_variants() -> None:
    """SPEC's and the README's variant tables list the variants of spec.SPEC_VARIANTS, in order."""
    spec_table = section(SPEC.read_text(), "CNI variants (the value of `--cni`)")
    assert table_names(spec_table) == list(SPEC_VARIANTS)
    assert table_names(section(README.read_text(), "Variants")) == list(SPEC_VARIANTS)


def test_spec_scenarios_are_the_codes() -> None:
    table = section(SPEC.read_text(), "Scenarios (the value of `--scenarios`)")
    assert table_names(table) == list(SCENARIOS)


def test_spec_command_list_names_every_subcommand() -> None:
    pytest.importorskip("mininet")  # the CLI imports the variants, which import Mininet
    from k8stopo import cli
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = section(SPEC.read_text(), "Command line")
    listed = set(re.findall(r"^- `k8stopo (\w+)", commands, re.M))
    assert listed == set(sub.choices)
