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


def run_dirs() -> set[str]:
    return {p.name for p in runstate.STATE_ROOT.glob(f"{runstate.PREFIX}*")} \
        if runstate.STATE_ROOT.is_dir() else set()


def assert_gone(prefix: str, pids: list[dict]) -> None:
    """Nothing of run ``prefix`` is left: links, processes, named netns, state directory."""
    links = [l for l in runstate.root_links() if l.startswith(prefix)]
    assert links == [], f"links left: {links}"
    alive = [p for p in pids if runstate.alive(p["pid"], p["start"])]
    assert alive == [], f"processes left: {alive}"
    assert not (runstate.STATE_ROOT / prefix).exists(), "state directory left"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in netns.split() if n.startswith(prefix)], f"named netns left: {netns}"
