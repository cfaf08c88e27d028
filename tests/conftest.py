"""Shared fixtures: clusters are real (Mininet, netns, CNI plugins, BIRD) and need root.

A test runs anywhere, as any user, unless it (or its module) is marked ``requires_root``:
it builds namespaces or runs a command that needs root (skipped when not root). Parsers,
statistics, manifests, specs and charts from CSVs run on any machine (``make test-quick``).
A test that creates a run or calls a root-only command without the mark fails, as root
too, so the quick set never holds one by mistake.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from k8stopo import runstate

try:
    from mininet.log import setLogLevel
except ImportError:  # a laptop with the CSVs only: the rootless tests still run
    pass
else:
    setLogLevel("error")  # Mininet's LinuxBridge warns about bridge-nf-call-iptables per build


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_root: builds network namespaces or runs a "
                            "root-only k8stopo command (skipped when not root)")
    config.addinivalue_line("markers", "slow: takes minutes without a cluster (executes the "
                            "notebooks); left out of `make test-quick`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="builds network namespaces: run as root")
    for item in items:
        if item.get_closest_marker("requires_root") is not None:
            item.add_marker(skip)


REPO = Path(__file__).resolve().parent.parent
#: the commands that refuse to run without root (cli._require_root)
ROOT_COMMANDS = frozenset({"up", "bench", "probe", "scale", "clean"})
_unmarked = False  # the running test lacks requires_root (see _root_needs_the_mark)


@pytest.fixture(autouse=True)
def _root_needs_the_mark(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Fail a test that would need root without saying so (requires_root), even as root:
    otherwise a non-root `make test-quick` would fail on it, or pass it for the wrong
    reason (a root-only command refusing "must run as root" with status 2)."""
    global _unmarked
    if request.node.get_closest_marker("requires_root") is not None:
        yield
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail("this test creates a k8stopo run or calls a root-only command: "
                    "mark it requires_root")
    monkeypatch.setattr(runstate.RunState, "__init__", refuse)
    if "k8stopo.cli" in sys.modules:  # imported by any test that calls it (it needs Mininet)
        monkeypatch.setattr(sys.modules["k8stopo.cli"], "_require_root", refuse)
    _unmarked = True
    yield
    _unmarked = False


@pytest.fixture(autouse=True, scope="session")
def _remove_kept_logs():
    """Tests fail builds on purpose, and a failed build keeps its daemons' logs for the user
    (runstate.LOGS); the tests remove the ones they caused, nothing else."""
    logs = runstate.STATE_ROOT / runstate.LOGS
    before = set(logs.iterdir()) if logs.is_dir() else set()
    yield
    if logs.is_dir():
        for path in set(logs.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)
        if not before and not any(logs.iterdir()):
            logs.rmdir()


def interruptible() -> None:
    """``preexec_fn`` of a child the test interrupts: SIGINT back to its default. A shell's
    background job inherits SIGINT ignored (POSIX), and Python keeps an inherited SIG_IGN,
    so under `make test &` the child would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def k8stopo(*args: str, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the command line as a user would (same interpreter as the tests)."""
    if _unmarked and next((a for a in args if not a.startswith("-")), "") in ROOT_COMMANDS:
        pytest.fail(f"k8stopo {' '.join(args)} needs root: mark the test requires_root")
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
    """Nothing of run ``prefix`` is left: links, processes, named netns, state directory."""
    links = [l for l in runstate.root_links() if l.startswith(prefix)]
    assert links == [], f"links left: {links}"
    alive = [p for p in pids if runstate.alive(p["pid"], p["start"])]
    assert alive == [], f"processes left: {alive}"
    assert not (runstate.STATE_ROOT / prefix).exists(), "state directory left"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in netns.split() if n.startswith(prefix)], f"named netns left: {netns}"


@pytest.fixture
def broken_bird_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BIRD's config template with a syntax error appended, so that BIRD's own parser
    refuses every node's config: a daemon failing for real, as a user's edit could make it."""
    from k8stopo import templates
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "bird.conf").write_text((templates.TEMPLATES / "bird.conf").read_text()
                                      + "protocol nonsense {\n")
    monkeypatch.setenv("K8STOPO_TEMPLATES", str(broken))  # this process and the CLI it runs
