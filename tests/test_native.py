"""k8stopo.native: the C forwarders as daemons: start-up handshake and failure reports
(no cluster; the forwarders themselves are exercised in tests/test_flannel_weave.py)."""
from __future__ import annotations

from pathlib import Path

import isolated
import pytest

from k8stopo import native, runstate
from k8stopo.daemon import Daemons
from k8stopo.errors import DaemonError
from k8stopo.node import Endpoint


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An endpoint in a network namespace of its own, with a throw-away run state."""
    with isolated.endpoint(tmp_path, monkeypatch, "test-native") as endpoint:
        yield endpoint


@pytest.mark.requires_root
@pytest.mark.parametrize("name", list(native.PROGRAMS))
def test_bad_arguments_fail_in_one_line_with_the_usage_and_the_log(here: Endpoint,
                                                                   name: str) -> None:
    group = Daemons()
    with pytest.raises(DaemonError, match=rf"{name} on here: exited with 2: .*usage: {name}") as err:
        group.start([native.FORWARDERS[name](here, ["--bogus", "x"])], timeout=5)
    assert "\n" not in str(err.value)
    assert err.value.log is not None and f"usage: {name}" in err.value.log.read_text()
    assert str(err.value.log).startswith(str(runstate.STATE_ROOT / runstate.LOGS))
    group.stop()
    assert here.state.data["pids"] == []  # stopped and forgotten


@pytest.mark.requires_root
def test_an_unbuilt_forwarder_says_how_to_build_it(here: Endpoint, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "BUILD", tmp_path / "nowhere")
    with pytest.raises(DaemonError, match=r"weave-sleeve on here: .* is not built: run `make install`"):
        Daemons().start([native.WeaveSleeve(here, [])], timeout=5)
    assert here.state.data["pids"] == []


def test_forwarders_go_with_their_cluster_at_once() -> None:
    assert all(cls.KILL_AT_TEARDOWN and cls.READY_LINE == "ready"
               for cls in native.FORWARDERS.values())


def test_every_forwarder_has_its_source_and_every_source_is_a_forwarder() -> None:
    sources = Path(native.__file__).parent
    assert sorted(p.stem.replace("_", "-") for p in sources.glob("*.c")) == sorted(native.PROGRAMS)
