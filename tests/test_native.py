"""k8stopo.native: the C forwarders' start-up handshake and failure reports (no cluster)."""
from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from k8stopo import native, runstate
from k8stopo.node import Endpoint
from k8stopo.proc import CommandError


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An endpoint for this process's own namespace, with a throw-away run state."""
    monkeypatch.setattr(runstate, "STATE_ROOT", tmp_path / "state")
    state = runstate.RunState("test-native")
    yield Endpoint("here", ipaddress.IPv4Address("127.0.0.1"), os.getpid(), state)
    state.remove_all()


@pytest.mark.requires_root
@pytest.mark.parametrize("name", list(native.PROGRAMS))
def test_bad_arguments_fail_with_the_usage_in_the_error(here: Endpoint, name: str) -> None:
    with pytest.raises(CommandError, match=f"usage: {name}"):
        native.start(here, name, ["--bogus", "x"])
    assert here.state.data["pids"] == []  # stopped and forgotten


@pytest.mark.requires_root
def test_an_unbuilt_forwarder_says_how_to_build_it(here: Endpoint, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "BUILD", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="make install"):
        native.start(here, "weave-sleeve", [])


@pytest.mark.requires_root
def test_a_forwarder_that_died_is_reported_with_its_last_log_line(here: Endpoint) -> None:
    native.log_path(here.state, "n1", "weave-sleeve").write_text("starting\nbind UDP: boom\n")
    dead = subprocess.Popen(["false"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        native.check_running(here.state, {"n2": alive}, "weave-sleeve")
        with pytest.raises(RuntimeError, match="weave-sleeve on n1 exited with 1: bind UDP: boom"):
            native.check_running(here.state, {"n2": alive, "n1": dead}, "weave-sleeve")
    finally:
        alive.kill()
        alive.wait()


def test_every_forwarder_has_its_source_and_every_source_is_a_forwarder() -> None:
    sources = Path(native.__file__).parent
    assert sorted(p.stem.replace("_", "-") for p in sources.glob("*.c")) == sorted(native.PROGRAMS)
