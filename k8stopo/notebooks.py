"""Execute the notebooks headless: ``k8stopo notebooks`` (``make notebooks``; the notebook
test runs it too).

    k8stopo notebooks [--results DIR] [--out DIR] [NOTEBOOK.ipynb ...]

Each notebook runs top to bottom in a fresh kernel of *this* Python (so the kernel sees
the same k8stopo, pandas and matplotlib), with its own folder as working directory and
``K8STOPO_RESULTS`` pointing at the results to read. A cell that raises fails the run
(exit 1, naming the notebook and the error). With ``--out`` the executed copies, charts
included, are written there; the notebooks in git stay without outputs.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

#: the notebooks of a checkout (experiments/notebooks/); k8stopo is installed editable from it
HERE = Path(__file__).resolve().parent.parent / "experiments" / "notebooks"
KERNEL = "k8stopo-python"
TIMEOUT_S = 600


def _kernel_spec(directory: Path) -> None:
    """A kernel spec running this interpreter (the system one may lack our packages)."""
    spec = directory / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"],
        "display_name": "k8stopo", "language": "python"}))


def execute(notebook: Path, results: Path, out: Path | None) -> None:
    """Run one notebook; raise CellExecutionError when a cell fails."""
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(notebook.parent)}})
    client.execute(env={**os.environ, "K8STOPO_RESULTS": str(results.resolve())})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / notebook.name)


def run(notebooks: Sequence[Path], results: Path, out: Path | None) -> int:
    """Execute ``notebooks`` (default: every one in experiments/notebooks/) over the CSVs
    under ``results``; print one line each; return the number that failed."""
    failed = 0
    with tempfile.TemporaryDirectory(prefix="k8stopo-kernel-") as tmp:
        _kernel_spec(Path(tmp))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [tmp, *filter(None, [os.environ.get("JUPYTER_PATH")])])
        for notebook in notebooks or sorted(HERE.glob("*.ipynb")):
            try:
                execute(notebook, results, out)
            except CellExecutionError as exc:
                failed += 1
                last = [line for line in str(exc).splitlines() if line.strip()][-1:]
                print(f"{notebook}: FAILED: {' '.join(last)}", file=sys.stderr)
            else:
                print(f"{notebook}: ok")
    return failed
