"""An endpoint of its own for tests that run daemons without a cluster: a throw-away network
namespace held by a ``sleep`` and a throw-away run state, so that the run's removal can only
ever reach that namespace's processes."""
from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from k8stopo import runstate
from k8stopo.node import Endpoint


@contextlib.contextmanager
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> Iterator[Endpoint]:
    monkeypatch.setattr(runstate, "STATE_ROOT", tmp_path / "state")
    holder = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    ours = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 10
    while runstate.netns_inode(holder.pid) in (ours, None) and time.monotonic() < deadline:
        time.sleep(0.01)  # unshare has not made the namespace yet
    assert runstate.netns_inode(holder.pid) not in (ours, None)
    state = runstate.RunState(kind)
    try:
        yield Endpoint("here", ipaddress.IPv4Address("127.0.0.1"), holder.pid, state)
    finally:
        state.remove_all()
        holder.kill()
        holder.wait()
