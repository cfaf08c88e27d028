"""The results CSV: one tidy row per measured value (docs/SPEC.md, "Results CSV").

This is the one place that writes and reads it, so ``bench``, ``plot`` and the
notebooks agree on the columns. It imports nothing but the standard library
(pandas only inside :func:`load`), so a notebook on a laptop needs no Mininet.

The schema grows. SPEC's ``REQUIRED`` columns must be in every file, in any order;
``COLUMNS`` are the ones k8stopo always writes; a measurement may add optional
parameter or environment columns through :attr:`Context.extra` (a new parameter
needs no edit here). Writing is durable row batch by row batch: an interrupted run
keeps everything it had measured, and a rerun pointed at the same file adds to it.
When a batch brings a column the file's header lacks, the file is rewritten once
with the union header (temporary file, fsync, rename), every old row keeping its
cells and the new cells left empty, so an old CSV can always be appended to and
plotted; :func:`load` fills columns a file lacks with NA.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from .spec import SpecError

if TYPE_CHECKING:  # pandas is only needed to read results back, not to measure
    import pandas

log = logging.getLogger("k8stopo.results")

#: the columns SPEC.md requires in every results CSV (any order)
REQUIRED: tuple[str, ...] = (
    "run_id", "started_at", "cni", "scenario", "protocol", "metric", "value", "unit",
    "repeat", "nodes", "pods_per_node", "streams", "duration_s", "mtu", "kernel",
    "k8stopo_version",
)
#: what k8stopo writes on every row: REQUIRED, then where it was measured and the raw output
COLUMNS: tuple[str, ...] = REQUIRED + ("client", "server", "client_ip", "server_ip", "raw_file")
NUMERIC: frozenset[str] = frozenset(
    {"value", "repeat", "nodes", "pods_per_node", "streams", "duration_s", "mtu"})
#: read as text whatever they look like (a run id or kernel "6.1" is not a number)
TEXT: frozenset[str] = frozenset(COLUMNS) - NUMERIC
#: the metric of a measurement that failed: value 1, unit count, the reason in ``error``
FAILED = "failed"
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Context:
    """The parameters of one measurement: everything on a row except what was measured.

    ``extra`` holds optional columns (``udp_bandwidth``, ``offloads``, ``msg_size``,
    ``cpu_model``, ``commit``, …): each key becomes a column, so a new parameter is one
    key here and nothing else. ``k8stopo.analysis`` treats every column it does not know
    as a setup parameter (a chart never mixes two values of it); environment columns
    that must not split setups are listed in ``analysis.ENVIRONMENT``.
    """

    run_id: str
    cni: str
    scenario: str
    protocol: str
    repeat: int
    nodes: int
    pods_per_node: int
    streams: int
    duration_s: float
    mtu: int | None  # the path MTU; None when no path was built (a failed build's rows)
    kernel: str
    k8stopo_version: str
    client: str
    server: str
    client_ip: str
    server_ip: str
    raw_file: str
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.extra:
            if not _NAME.fullmatch(name) or name in COLUMNS or name in ("extra", "metric",
                                                                         "value", "unit"):
                raise ValueError(f"extra result column {name!r} is not a new snake_case name")


class Sample(Protocol):
    """One value read from a tool's output (iperf3 -J, ping)."""

    @property
    def metric(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def unit(self) -> str: ...


def rows(ctx: Context, started_at: str, samples: Iterable[Sample]) -> list[dict[str, object]]:
    """One CSV row per sample: COLUMNS in order, then the context's extra columns."""
    base = {k: v for k, v in asdict(ctx).items() if k != "extra"}
    base["started_at"] = started_at
    out = []
    for s in samples:
        row = {**base, "metric": s.metric, "value": s.value, "unit": s.unit}
        out.append({**{col: row[col] for col in COLUMNS}, **ctx.extra})
    return out


def _header(path: Path, line: bytes) -> list[str]:
    """The columns of an existing file, refused when k8stopo could not read its rows back."""
    found = next(csv.reader([line.decode("utf-8").rstrip("\r\n")]))
    missing = [c for c in REQUIRED if c not in found]
    twice = sorted({c for c in found if found.count(c) > 1})
    if missing or twice:
        problem = (f"missing {', '.join(missing)}" if missing
                   else f"column(s) {', '.join(twice)} given twice")
        raise SpecError(f"{path}: header is not k8stopo's results columns ({problem}); "
                        "refusing to append, use another file")
    return found


def check_output_dir(path: Path, what: str) -> None:
    """Refuse (:class:`SpecError`), before a run creates anything, a directory it could
    not create or write into: its nearest existing ancestor must be a directory that takes
    a new entry. That is tried (a temporary directory, removed at once), because
    permissions do not tell: root passes every access check, yet cannot write in /proc, on
    a read-only mount or in an immutable directory."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise SpecError(f"{what} {path}: {existing} exists and is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".k8stopo-check-", dir=existing))
    except OSError as exc:
        raise SpecError(f"{what} {path}: cannot create anything in {existing} "
                        f"({exc.strerror or exc})") from None


def check_appendable(path: Path) -> None:
    """Refuse, before a run creates anything, an output file that CsvSink would refuse or
    could not create or append to."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path} is a directory, not a CSV file")
    check_output_dir(path.parent, f"{path}: directory")
    if path.is_file():
        try:
            with path.open("ab"), path.open("rb") as f:  # "ab": opened for appending, unchanged
                header = f.readline()
        except OSError as exc:
            raise SpecError(f"{path}: cannot append to it ({exc.strerror or exc})") from None
        if header:
            _header(path, header)


def _fsync_dir(path: Path) -> None:
    """Make a newly created or renamed file's directory entry durable too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One writer at a time per directory: a header rewrite renames the file, and a
    second writer must not append to the inode that is being replaced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _csv_text(fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]],
              header: bool) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n", restval="")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


class CsvSink:
    """Appends result rows to a CSV; every write is flushed and fsynced before it returns.

    An existing file is never replaced by other content: its rows are kept, cell for
    cell. A file is refused (:class:`SpecError`, a ValueError) only when its header
    lacks a REQUIRED column or names one twice. A last line cut short by a crash (no
    newline) is dropped before the next write, because the next row would otherwise be
    glued onto it; complete rows are never touched. The file is opened per write, under
    a lock on its directory, so two sinks on one file (a rerun beside a dead one) agree.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_appendable(self.path)
        self.write([])  # a new file gets its header now, an old one is checked and repaired

    def write(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Append rows (each with every COLUMNS key, plus any extra columns) durably."""
        for row in rows:
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise ValueError(f"result row lacks column(s): {', '.join(missing)}")
        wanted = list(COLUMNS) + [k for row in rows for k in row if k not in COLUMNS]
        wanted = list(dict.fromkeys(wanted))
        with _locked(self.path.parent):
            created = not self.path.exists()
            with self.path.open("a+b") as f:
                f.seek(0)
                first = f.readline()
                if not first:
                    f.write(_csv_text(wanted, rows, header=True))
                    self._sync(f, created)
                    return
                header = _header(self.path, first)
                self._drop_torn_tail(f)
                new = [c for c in wanted if c not in header]
                if not new:
                    f.write(_csv_text(header, rows, header=False))
                    self._sync(f, created)
                    return
            log.info("%s: adding column(s) %s to its header", self.path, ", ".join(new))
            self._rewrite(header + new, rows)

    def _sync(self, f: io.BufferedRandom, created: bool) -> None:
        f.flush()
        os.fsync(f.fileno())
        if created:
            _fsync_dir(self.path.parent)

    def _drop_torn_tail(self, f: io.BufferedRandom) -> None:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        keep = _complete(f.read(), self.path, "dropping")
        f.truncate(keep)
        os.fsync(f.fileno())

    def _rewrite(self, header: list[str], rows: Sequence[Mapping[str, object]]) -> None:
        """The old rows under the wider header, then the new rows, swapped in atomically."""
        with self.path.open(newline="", encoding="utf-8") as f:
            old = list(csv.DictReader(f))
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with tmp.open("wb") as out:
                out.write(_csv_text(header, old, header=True))
                out.write(_csv_text(header, rows, header=False))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        """Nothing stays open between writes; kept so a sink reads as a context manager."""

    def __enter__(self) -> CsvSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def complete_text(path: Path | str) -> str:
    """A results file's text up to its last complete line: k8stopo ends every row with a
    newline, so a last line without one was cut by a crash mid-write (a cut number would
    read as a wrong value) and is left out, with a warning; the file is not changed."""
    data = Path(path).read_bytes()
    return data[:_complete(data, path, "ignoring")].decode("utf-8")


def _complete(data: bytes, path: Path | str, what: str) -> int:
    """The length of ``data`` up to its last complete line, warning (``what``: what is
    done with the rest) when a crash mid-write left a torn one."""
    keep = len(data) if data.endswith(b"\n") or not data else data.rfind(b"\n") + 1
    if keep < len(data):
        log.warning("%s: %s an incomplete last line (%d bytes) left by an interrupted write",
                    path, what, len(data) - keep)
    return keep


def load(paths: Sequence[Path | str]) -> pandas.DataFrame:
    """Concatenate result CSVs; refuse one lacking a SPEC column rather than plot a guess.

    Columns that some files lack (added by a later version) are NA in their rows, and
    every COLUMNS column exists in the result, so code may rely on it.
    """
    import pandas as pd

    if not paths:
        raise ValueError("no results CSV given")
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(io.StringIO(complete_text(path)), dtype=dict.fromkeys(TEXT, str))
        except (OSError, ValueError) as exc:  # missing, empty, not a CSV, not UTF-8
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{path}: cannot read results: {reason}") from None
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(pd.NA, index=df.index, dtype="str" if col in TEXT else "float")
    return df


def find(root: Path | str) -> list[Path]:
    """The results CSVs under ``root`` (``root/**/*.csv`` whose header has every REQUIRED
    column): charts' summary.csv and the published figures are not results."""
    found = []
    for path in sorted(Path(root).glob("**/*.csv")):
        with path.open("rb") as f:
            first = f.readline()
        try:
            columns = next(csv.reader([first.decode("utf-8")]), [])
        except UnicodeDecodeError:
            continue
        if set(REQUIRED) <= {c.strip() for c in columns}:
            found.append(path)
    return found


def load_experiment(name: str, root: Path | str = "results") -> pandas.DataFrame:
    """The rows of one experiment under ``root``: those whose ``experiment`` column is
    ``name``, and the rows of files under ``root/name/`` that have no such column.
    An empty frame with COLUMNS when there are none, so a notebook can say so and go on."""
    import pandas as pd

    root = Path(root)
    frames = []
    for path in find(root):
        frame = load([path])
        if "experiment" in frame.columns and frame["experiment"].notna().any():
            frames.append(frame[frame["experiment"] == name])
        elif path.is_relative_to(root / name):
            frames.append(frame)
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)


def new_run_id() -> str:
    """A run id that sorts by time and does not collide within a second: 20261125T134501Z-3fa2."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def utc_now() -> str:
    """The time of a measurement, ISO 8601 UTC to the second: 2026-11-25T13:45:01Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
