"""Execute the notebooks headless (``make notebooks``; the notebook test runs it too).

    python experiments/notebooks/run.py [--results DIR] [--out DIR] [NOTEBOOK.ipynb ...]

Each notebook runs top to bottom in a fresh kernel of *this* Python (so the kernel sees
the same k8stopo, pandas and matplotlib), with its own folder as working directory and
``K8STOPO_RESULTS`` pointing at the results to read. A cell that raises fails the run
(exit 1, naming the notebook and the error). With ``--out`` the executed copies, charts
included, are written there; the notebooks in git stay without outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook here")
    p.add_argument("--results", type=Path, default=HERE.parent.parent / "results",
                   help="folder of results CSVs (searched recursively)")
    p.add_argument("--out", type=Path, help="write the executed notebooks here")
    args = p.parse_args(argv)
    notebooks = args.notebooks or sorted(HERE.glob("*.ipynb"))
    failed = 0
    with tempfile.TemporaryDirectory(prefix="k8stopo-kernel-") as tmp:
        _kernel_spec(Path(tmp))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [tmp, *filter(None, [os.environ.get("JUPYTER_PATH")])])
        for notebook in notebooks:
            try:
                execute(notebook, args.results, args.out)
            except CellExecutionError as exc:
                failed += 1
                last = [line for line in str(exc).splitlines() if line.strip()][-1:]
                print(f"{notebook}: FAILED: {' '.join(last)}", file=sys.stderr)
            else:
                print(f"{notebook}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
