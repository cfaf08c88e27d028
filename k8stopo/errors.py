"""The run's own failure types, so the command line can tell failures from bugs.

Bad input is :class:`k8stopo.spec.SpecError` (exit 2). A run that fails for a
reason outside k8stopo's code (a tool or plugin that exits non-zero, a daemon
that dies or never gets ready, a measurement whose output is unusable) raises a
:class:`RunError` or one of its subclasses (exit 1, one line; ``bench`` records the
variant as failed and goes on). Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

from pathlib import Path


class RunError(RuntimeError):
    """The run failed; the message says which tool or daemon and why."""


def tail(text: str, lines: int = 3) -> str:
    """The last few non-empty lines of a tool's output, on one line (for one-line errors)."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "no output"


def one_line(exc: BaseException) -> str:
    """A failure's whole message on one line (a daemon's status table joined by ``|``), so
    the user reads one line per failure whatever the tool printed."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip()) \
        or type(exc).__name__


class DaemonError(RunError):
    """A daemon failed its config check, exited, or never became ready; the message names
    it, where it ran, and its log file (kept for the user after a failed build)."""

    def __init__(self, name: str, where: str, why: str, log: Path | None = None) -> None:
        self.name, self.where, self.why, self.log = name, where, why, log
        seen = f"; log: {log}" if log is not None else ""
        super().__init__(f"{name} on {where}: {why}{seen}")


class NotReady(RunError, TimeoutError):
    """Something the cluster waits for (BGP, DNS, a daemon) did not converge in time.

    A TimeoutError too, so callers that waited on TimeoutError keep working."""
