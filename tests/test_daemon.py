"""k8stopo.daemon: config checked before start, one-line failures naming the daemon and its
log, readiness, stop policy and order; and a cluster whose BIRD config is refused."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import isolated
import pytest

from k8stopo import runstate
from k8stopo.cni.calico import Bird
from k8stopo.daemon import Daemon, Daemons
from k8stopo.dns.agent import Dnsmasq
from k8stopo.errors import DaemonError
from k8stopo.node import Endpoint

from conftest import REPO

pytestmark = pytest.mark.requires_root  # daemons in a namespace of their own


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An endpoint in a network namespace of its own, with a throw-away run state."""
    with isolated.endpoint(tmp_path, monkeypatch, "test-daemon") as endpoint:
        yield endpoint


class Script(Daemon):
    """A daemon that is a few lines of Python (argv from the test), ready once it printed
    ``ready``."""

    NAME = "script"
    READY_LINE = "ready"

    def argv(self) -> list[object]:
        return [sys.executable, "-c", self.values["code"]]


def broken_templates(tmp_path: Path, name: str, text: str,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A template directory searched before the package's, holding a broken ``name``."""
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / name).write_text(text)
    monkeypatch.setenv("K8STOPO_TEMPLATES", str(tmp_path / "templates"))


def test_a_refused_config_fails_before_the_daemon_starts(here: Endpoint, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """dnsmasq's own parser refuses the config: one line naming dnsmasq, where, the parser's
    complaint and its log (kept outside the run's state), and no process was started."""
    broken_templates(tmp_path, "dnsmasq.conf", "port=53\nno-such-option=1\n", monkeypatch)
    group = Daemons()
    with pytest.raises(DaemonError) as err:
        group.start([Dnsmasq(here, **Dnsmasq.defaults())], timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("dnsmasq on here: config check failed: ")
    assert "line 2" in message  # dnsmasq's own words: bad option at line 2
    log = err.value.log
    assert log is not None and log.name == "dnsmasq_here.log" and f"log: {log}" in message
    assert log.is_relative_to(runstate.STATE_ROOT / runstate.LOGS)
    assert "no-such-option" in (log.parent / "dnsmasq_here.conf").read_text()
    assert "line 2" in log.read_text()
    assert here.state.data["pids"] == [] and len(group) == 0  # nothing started


def test_birds_parser_refuses_a_broken_config(here: Endpoint, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    broken_templates(tmp_path, "bird.conf", "router id {{ router_id }};\nprotocol nonsense {}\n",
                     monkeypatch)
    with pytest.raises(DaemonError, match=r"^bird on here: config check failed: .*syntax error"):
        Daemons().start([Bird(here, router_id="10.0.0.1")], timeout=5)
    assert here.state.data["pids"] == []


def test_a_daemon_that_exits_at_once_is_one_line_with_its_log(here: Endpoint) -> None:
    group = Daemons()
    code = "import sys; print('starting', file=sys.stderr); sys.exit('bind: address in use')"
    with pytest.raises(DaemonError) as err:
        group.start([Script(here, code=code)], timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("script on here: exited with 1: starting | bind: address in use")
    assert err.value.log is not None and "address in use" in err.value.log.read_text()
    group.stop()
    assert here.state.data["pids"] == []


def test_a_daemon_never_ready_is_named_after_its_timeout(here: Endpoint) -> None:
    group = Daemons()
    with pytest.raises(DaemonError, match=r"^script on here: not ready after 1s; log: "):
        group.start([Script(here, code="import time; time.sleep(30)")], timeout=1)
    group.stop()
    assert here.state.data["pids"] == []


def test_ready_line_usage_and_accounts(here: Endpoint) -> None:
    """A READY_LINE daemon is ready once it printed it; its CPU and memory are read from
    /proc while it runs; it is tracked by the run until stopped."""
    group = Daemons()
    burn = ("import time\nwhile time.process_time() < 0.3: pass\n"
            "print('ready', flush=True); time.sleep(30)")
    daemon = Script(here, code=burn)
    group.start([daemon], timeout=30)
    assert daemon.running and daemon.pid in {p["pid"] for p in here.state.data["pids"]}
    assert daemon.cpu_seconds() >= 0.25  # the 0.3 s it burnt, in clock ticks
    assert daemon.rss_kib() > 1000  # a Python interpreter
    group.stop()
    assert not daemon.running and here.state.data["pids"] == []


def test_stop_kills_the_doomed_at_once_then_stops_the_rest_in_reverse_order(
        here: Endpoint) -> None:
    """A Daemons group stops in reverse start order: the daemons that go with their cluster
    are SIGKILLed at once first, the others get SIGTERM, last started first."""
    stopped: list[str] = []

    class Graceful(Script):
        def stop(self) -> None:
            stopped.append(self.values["tag"])
            super().stop()

    class Doomed(Graceful):
        KILL_AT_TEARDOWN: ClassVar[bool] = True

    sleep = "print('ready', flush=True); import time; time.sleep(30)"
    daemons = [Graceful(here, code=sleep, tag="a"), Doomed(here, code=sleep, tag="b"),
               Graceful(here, code=sleep, tag="c")]
    group = Daemons()
    group.start(daemons[:1], daemons[1:], timeout=5)
    assert [d.values["tag"] for d in group] == ["a", "b", "c"]
    group.stop()
    assert stopped == ["c", "a"]  # b was killed, never asked
    assert [d.returncode for d in daemons] == [-15, -9, -15]
    assert here.state.data["pids"] == [] and len(group) == 0


def test_up_with_a_broken_bird_template_ends_in_one_line_naming_bird_and_its_log(
        tmp_path: Path) -> None:
    """A user's view: `k8stopo up --cni calico-bgp` whose BIRD config BIRD refuses ends
    with exit 1 and one line naming BIRD, the node and the kept log."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "bird.conf").write_text("router id {{ router_id }};\nlog \"{{ log }}\" all;\n"
                                         "protocol kernel { nonsense; }\n")
    env = {**os.environ, "K8STOPO_TEMPLATES": str(templates)}
    result = subprocess.run([sys.executable, "-m", "k8stopo", "up", "--cni", "calico-bgp",
                             "--nodes", "2", "--pods-per-node", "0"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("k8stopo: failed")]
    assert len(failed) == 1, result.stderr
    assert failed[0].startswith("k8stopo: failed: bird on n"), failed[0]
    assert "config check failed" in failed[0] and "syntax error" in failed[0]
    log = Path(failed[0].split("; log: ")[1].split(" (run with")[0])
    assert log.name.startswith("bird_n") and log.name.endswith(".log")
    assert "syntax error" in log.read_text()
    assert "Traceback" not in result.stderr
    assert "build failed" not in result.stderr  # the failure names the log: no second line


def test_groups_start_in_turn_and_none_starts_if_a_later_config_is_refused(
        here: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every config of every group is checked before the first group starts; each group is
    ready before the next starts (BIRD: the reflectors before their clients)."""
    broken_templates(tmp_path, "dnsmasq.conf", "no-such-option=1\n", monkeypatch)
    group = Daemons()
    first = Script(here, code="print('ready', flush=True); import time; time.sleep(30)")
    with pytest.raises(DaemonError, match=r"^dnsmasq on here: config check failed"):
        group.start([first], [Dnsmasq(here, **Dnsmasq.defaults())], timeout=5)
    assert first.proc is None and here.state.data["pids"] == []
    mark = tmp_path / "first-ready"
    early = Script(here, code=f"import pathlib, time; time.sleep(0.5); "
                              f"pathlib.Path({str(mark)!r}).touch(); print('ready', flush=True); "
                              f"time.sleep(30)")
    late = Script(here, code=f"import pathlib, sys, time; "
                             f"sys.exit(0) if not pathlib.Path({str(mark)!r}).exists() else "
                             f"print('ready', flush=True); time.sleep(30)")
    group.start([early], [late], timeout=10)  # late exits (a DaemonError) if early was not ready
    assert early.running and late.running
    group.stop()
