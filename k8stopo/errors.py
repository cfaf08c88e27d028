"""The run's own failure type, so the command line can tell failures from bugs.

Bad input is :class:`k8stopo.spec.SpecError` (exit 2). A run that fails for a
reason outside k8stopo's code (a tool or plugin that exits non-zero, a daemon
that dies, a measurement whose output is unusable) raises a :class:`RunError`
(exit 1, one line). Anything else is a bug and shows its traceback.
"""
from __future__ import annotations


class RunError(RuntimeError):
    """The run failed; the message says which tool or daemon and why."""
