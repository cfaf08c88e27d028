"""Shared fixtures: clusters are real (Mininet, netns, CNI plugins, BIRD) and need root."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mininet.log import setLogLevel

from k8stopo import runstate

setLogLevel("error")  # Mininet's LinuxBridge warns about bridge-nf-call-iptables on every build

if os.geteuid() != 0:
    pytest.exit("k8stopo's tests build network namespaces: run them as root", returncode=2)

REPO = Path(__file__).resolve().parent.parent


def k8stopo(*args: str, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the command line as a user would (same interpreter as the tests)."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.run([sys.executable, "-m", "k8stopo", *args], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def _ours(pid: int) -> bool:
    """``pid`` is this test process or one of its descendants."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def run_dirs() -> set[str]:
    """The runs of these tests (or of dead owners): other k8stopo runs on the machine
    (a developer's cluster) may come and go meanwhile and are none of the tests' business."""
    found = set()
    for run in runstate.runs():
        try:
            owner = runstate.RunState.open(run.name).data["owner"]
        except (FileNotFoundError, KeyError):
            continue
        if _ours(owner["pid"]) or not runstate.alive(owner["pid"], owner["start"]):
            found.add(run.name)
    return found


def assert_gone(prefix: str, pids: list[dict]) -> None:
    """Nothing of run ``prefix`` is left: links, processes, state directory."""
    links = [l for l in runstate.root_links() if l.startswith(prefix)]
    assert links == [], f"links left: {links}"
    alive = [p for p in pids if runstate.alive(p["pid"], p["start"])]
    assert alive == [], f"processes left: {alive}"
    assert not (runstate.STATE_ROOT / prefix).exists(), "state directory left"
