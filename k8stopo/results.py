"""The results CSV: one tidy row per measured value (SPEC.md, "Results CSV").

This is the one place that writes and reads it, so ``bench``, ``plot`` and the
notebooks agree on the columns. Writing is append-only and durable row batch by
row batch: a run that is interrupted keeps everything it had measured, and a
rerun pointed at the same file adds to it instead of replacing it.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

from .spec import SpecError

if TYPE_CHECKING:  # pandas is only needed to read results back, not to measure
    import pandas

log = logging.getLogger("k8stopo.results")

COLUMNS: tuple[str, ...] = (
    "run_id", "started_at", "cni", "scenario", "protocol", "metric", "value", "unit",
    "repeat", "nodes", "pods_per_node", "streams", "duration_s", "mtu", "kernel",
    "k8stopo_version", "client", "server", "client_ip", "server_ip", "raw_file",
    "udp_bandwidth", "msg_size", "offloads", "cpu_model", "iptables_mode", "commit", "command",
    "experiment",
)
# The columns SPEC.md requires; the rest of COLUMNS are welcome extras.
REQUIRED: tuple[str, ...] = COLUMNS[:COLUMNS.index("k8stopo_version") + 1]
NUMERIC: frozenset[str] = frozenset(
    {"value", "repeat", "nodes", "pods_per_node", "streams", "duration_s", "mtu", "msg_size"})


@dataclass(frozen=True)
class Context:
    """The parameters of one measurement: everything on a row except what was measured."""

    run_id: str
    cni: str
    scenario: str
    protocol: str
    repeat: int
    nodes: int
    pods_per_node: int
    streams: int
    duration_s: float
    mtu: int
    kernel: str
    k8stopo_version: str
    client: str
    server: str
    client_ip: str
    server_ip: str
    raw_file: str
    udp_bandwidth: str = ""  # iperf3 -b, on udp rows only
    msg_size: int | str = ""  # sockperf -m, on tcp_rr rows only
    offloads: str = ""  # on | off (segmentation/checksum offloads of the emulated wire)
    cpu_model: str = ""
    iptables_mode: str = ""  # nf_tables | legacy (iptables -V)
    commit: str = ""  # git describe of the k8stopo checkout, or "unknown"
    command: str = ""  # the command line that produced the row
    experiment: str = ""  # the experiment's name, empty without --experiment


class Sample(Protocol):
    """One value read from a tool's output (iperf3 -J, ping)."""

    @property
    def metric(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def unit(self) -> str: ...


def rows(ctx: Context, started_at: str, samples: Iterable[Sample]) -> list[dict[str, object]]:
    """One CSV row per sample, keys in COLUMNS order."""
    base = {**asdict(ctx), "started_at": started_at}
    out = []
    for s in samples:
        row = {**base, "metric": s.metric, "value": s.value, "unit": s.unit}
        out.append({col: row[col] for col in COLUMNS})
    return out


def _check_header(path: Path, line: bytes) -> None:
    """Refuse to append under a header other than COLUMNS: the rows would be misread."""
    found = next(csv.reader([line.decode("utf-8").rstrip("\r\n")]))
    if tuple(found) == COLUMNS:
        return
    missing = [c for c in COLUMNS if c not in found]
    extra = [c for c in found if c not in COLUMNS]
    parts = [f"missing {', '.join(missing)}" if missing else "",
             f"unexpected {', '.join(extra)}" if extra else ""]
    problem = "; ".join(p for p in parts if p) or "same columns in another order"
    raise SpecError(f"{path}: header is not k8stopo's results columns ({problem}); "
                    "refusing to append, use another file")


def check_appendable(path: Path) -> None:
    """Refuse, before a run creates anything, an output file that CsvSink would refuse."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path} is a directory, not a CSV file")
    if path.is_file():
        with path.open("rb") as f:
            header = f.readline()
        if header:
            _check_header(path, header)


def _fsync_dir(path: Path) -> None:
    """Make a newly created file's directory entry durable too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CsvSink:
    """Appends result rows to a CSV; every write is flushed and fsynced before it returns.

    An existing file is never overwritten: it is appended to, and only if its header is
    exactly COLUMNS (else :class:`SpecError`, a ValueError).
    A last line cut short by a crash (no newline) is dropped on reopen, because the
    next row would otherwise be glued onto it; complete rows are never touched.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._file = self.path.open("a+b")  # "a": every write lands at the end
        try:
            self._file.seek(0)
            header = self._file.readline()
            if not header:
                self._append(",".join(COLUMNS) + "\n")
            else:
                _check_header(self.path, header)
                self._drop_torn_tail()
        except BaseException:
            self._file.close()
            raise
        if created:
            _fsync_dir(self.path.parent)

    def _drop_torn_tail(self) -> None:
        size = self._file.seek(0, os.SEEK_END)
        self._file.seek(size - 1)
        if self._file.read(1) == b"\n":
            return
        self._file.seek(0)
        keep = self._file.read().rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (%d bytes) left by an "
                    "interrupted write", self.path, size - keep)
        self._file.truncate(keep)
        os.fsync(self._file.fileno())

    def _append(self, text: str) -> None:
        self._file.write(text.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, rows: list[dict[str, object]]) -> None:
        """Append rows (each with exactly COLUMNS as keys) in one durable write."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        for row in rows:
            if row.keys() != set(COLUMNS):
                wrong = sorted(set(COLUMNS) ^ row.keys())
                raise ValueError(f"result row has wrong columns: {', '.join(wrong)}")
            writer.writerow(row)
        self._append(buf.getvalue())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def load(paths: Sequence[Path]) -> pandas.DataFrame:
    """Concatenate result CSVs; refuse one lacking a SPEC column rather than plot a guess."""
    import pandas as pd

    if not paths:
        raise ValueError("no results CSV given")
    frames = []
    for path in paths:
        frame = pd.read_csv(path, dtype={c: str for c in COLUMNS if c not in NUMERIC})
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def new_run_id() -> str:
    """A run id that sorts by time and does not collide within a second: 20261125T134501Z-3fa2."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def utc_now() -> str:
    """The time of a measurement, ISO 8601 UTC to the second: 2026-11-25T13:45:01Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
