"""The machine and checkout that rows were measured on: the columns every result row of
``bench`` and ``scale`` carries (``kernel``, ``cpu_model``, ``iptables_mode``, ``commit``,
``command``), so that rows from different machines or versions are never taken for one
setup."""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

from . import proc

CHECKOUT = Path(__file__).resolve().parent.parent


def cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` of /proc/cpuinfo (x86), else ``unknown``."""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def iptables_mode(version: str) -> str:
    """``nf_tables`` or ``legacy`` from ``iptables -V`` (``iptables v1.8.9 (nf_tables)``)."""
    match = re.search(r"\((nf_tables|legacy)\)", version)
    return match.group(1) if match else "unknown"


def _git_describe() -> str:
    try:
        return proc.output(["git", "-C", str(CHECKOUT), "describe", "--always", "--dirty",
                            "--tags"], timeout=10).strip() or "unknown"
    except (proc.CommandError, OSError):  # no git, or not a checkout (installed package)
        return "unknown"


@dataclass(frozen=True)
class Environment:
    """What every row says about where and how it was measured."""

    command: str
    kernel: str
    cpu_model: str
    iptables_mode: str
    commit: str

    @classmethod
    def here(cls, command: str) -> Environment:
        try:
            version = proc.output(["iptables", "-V"], timeout=10)
        except (proc.CommandError, OSError):
            version = ""
        return cls(command=command, kernel=platform.release(),
                   cpu_model=cpu_model(Path("/proc/cpuinfo").read_text()),
                   iptables_mode=iptables_mode(version), commit=_git_describe())

    def columns(self) -> dict[str, str]:
        """The row columns beyond results.COLUMNS' ``kernel``."""
        return {"cpu_model": self.cpu_model, "iptables_mode": self.iptables_mode,
                "commit": self.commit, "command": self.command}
