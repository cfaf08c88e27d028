"""Runs that survive anything: nothing of a run outlives it, nothing foreign is touched.

The interrupt test signals real `k8stopo` processes at random points of their life
(seeded, so a failure can be replayed) and checks, after SIGINT/SIGTERM, that the
run cleaned itself and, after SIGKILL, that `k8stopo clean` removes every leftover
while a namespace, a link and a process planted by the test survive.
"""
from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k8stopo import proc, runstate

from conftest import REPO, interruptible, k8stopo, run_dirs

pytestmark = pytest.mark.requires_root  # clusters, or commands that need root


def assert_run_gone(prefix: str, pids: list[dict]) -> None:
    """Nothing of run ``prefix`` is left: processes, cgroup, links, state directory."""
    assert not [l for l in runstate.root_links() if l.startswith(prefix)]
    assert [p for p in pids if runstate.alive(p["pid"], p["start"])] == []
    root = runstate.cgroup2_root()
    if root is not None:
        assert not (root / "k8stopo" / prefix).exists(), "cgroup left"
    assert not (runstate.STATE_ROOT / prefix).exists(), "state directory left"


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "k8stopo", *args], cwd=REPO, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=interruptible)


class Planted:
    """Things that are not the run's: a netns, a root-ns link and a process."""

    def __init__(self, tag: str) -> None:
        self.netns, self.link = f"planted{tag}", f"pl{tag}"
        proc.run(["ip", "netns", "add", self.netns])
        proc.run(["ip", "link", "add", self.link, "type", "veth", "peer", "name", f"{self.link}b"])
        self.sleeper = subprocess.Popen(["sleep", "600"])

    def intact(self) -> bool:
        return (Path(f"/run/netns/{self.netns}").exists() and self.link in runstate.root_links()
                and self.sleeper.poll() is None)

    def remove(self) -> None:
        self.sleeper.kill()
        self.sleeper.wait()
        proc.run(["ip", "link", "del", self.link], check=False)
        proc.run(["ip", "netns", "del", self.netns], check=False)


def runs_of(pid: int) -> list[str]:
    """The runs (their prefixes) whose owner is process ``pid`` (other runs may be going on)."""
    mine = []
    for prefix in run_dirs():
        try:
            if runstate.RunState.open(prefix).data["owner"]["pid"] == pid:
                mine.append(prefix)
        except (FileNotFoundError, KeyError):
            continue
    return mine


def _new_prefix(p: subprocess.Popen[str], kind_timeout: float = 30) -> str | None:
    """The cluster run started by ``p`` (not its doctor's scratch run), once it exists."""
    deadline = time.monotonic() + kind_timeout
    while time.monotonic() < deadline and p.poll() is None:
        for prefix in runs_of(p.pid):
            try:
                if runstate.RunState.open(prefix).data["kind"] == "cluster":
                    return prefix
            except FileNotFoundError:
                continue
        time.sleep(0.05)
    return None


COMMANDS = [
    ("up", "--cni", "calico-bgp", "--nodes", "2", "--pods-per-node", "1"),
    ("up", "--cni", "flannel-vxlan", "--nodes", "3", "--pods-per-node", "2"),
    ("bench", "--cni", "flannel-host-gw", "--scenarios", "pod-to-pod-cross-node",
     "--protocols", "tcp,icmp", "--duration", "1", "--repeat", "2"),
]


def test_random_signals_never_leave_anything(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    planted = Planted(str(os.getpid() % 10000))
    try:
        for trial in range(8):
            command = list(rng.choice(COMMANDS))
            if command[0] == "bench":
                command += ["--out", str(tmp_path / f"t{trial}.csv")]
            sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
            p = start(*command)
            prefix = _new_prefix(p)
            time.sleep(rng.uniform(0.0, 4.0))  # anywhere in the build or the measurements
            pids = runstate.RunState.open(prefix).data["pids"] if prefix and (
                runstate.STATE_ROOT / prefix / runstate.JOURNAL).exists() else []
            p.send_signal(sig)
            _out, err = p.communicate(timeout=120)
            if prefix is None:
                continue
            why = f"trial {trial}: {' '.join(command)} got {sig.name}: {err[-500:]}"
            if sig == signal.SIGKILL:
                result = k8stopo("clean")
                assert result.returncode == 0, why + result.stderr
            else:
                assert p.returncode in (0, 1, 130, 143), why
            assert_run_gone(prefix, pids)
            assert planted.intact(), why
            if command[0] == "bench" and (tmp_path / f"t{trial}.csv").exists():
                with (tmp_path / f"t{trial}.csv").open(newline="") as f:
                    rows = list(csv.reader(f))  # whole rows only (the command is quoted)
                assert all(len(row) == len(rows[0]) for row in rows), why
    finally:
        planted.remove()


def test_a_daemon_started_from_the_mininet_cli_dies_with_the_run(tmp_path: Path) -> None:
    pidfile = tmp_path / "iperf3.pid"
    script = f"pod-n1-0 iperf3 -s -D -I {pidfile}\npod-n1-0 sleep 0.5\nexit\n"
    result = k8stopo("up", "--cni", "flannel-host-gw", "--nodes", "2", "--pods-per-node", "1",
                     "--cli", input=script)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the pod's iperf3 -D outlived the run"


def test_a_process_entering_a_run_namespace_from_outside_is_stopped_too() -> None:
    from k8stopo.cluster import Cluster
    from k8stopo.spec import ClusterSpec
    with Cluster(ClusterSpec(cni="host", nodes=1, pods_per_node=0)) as c:
        node = c.nodes[0]
        # not through k8stopo: plain nsenter, outside the run's cgroup
        outsider = subprocess.Popen(["nsenter", f"--net=/proc/{node.pid}/ns/net", "sleep", "600"],
                                    start_new_session=True)
        time.sleep(0.2)
        started = runstate.start_time(outsider.pid)
        assert runstate.netns_inode(outsider.pid) == runstate.netns_inode(node.pid)
    # (teardown reaps it, being its parent here, so its exit status is not ours to read)
    assert not runstate.alive(outsider.pid, started)


def _clients_of(prefix: str) -> list[int]:
    """The iperf3 clients living in run ``prefix``'s namespaces."""
    recorded = [e["pid"] for e in runstate.RunState.open(prefix).data["pids"]]
    found = []
    for pid in runstate.in_namespaces_of(recorded):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if argv[0].endswith("iperf3") and "-c" in argv:
            found.append(pid)
    return found


def test_a_killed_bench_leaves_no_measuring_client(tmp_path: Path) -> None:
    """SIGKILL in the middle of a measurement: the Mininet shells exit with their pipes, so
    nothing identifies the client's namespace any more, yet `k8stopo clean` stops it (it
    ran inside the run's cgroup)."""
    p = start("bench", "--cni", "flannel-host-gw", "--scenarios", "pod-to-pod-cross-node",
              "--protocols", "tcp", "--duration", "30", "--repeat", "1", "--out",
              str(tmp_path / "b.csv"))
    try:
        prefix = _new_prefix(p)
        assert prefix is not None
        deadline = time.monotonic() + 60
        clients: list[int] = []
        while not clients and time.monotonic() < deadline:
            clients = _clients_of(prefix)
            time.sleep(0.1)
        assert clients, "no iperf3 client ran in the run's namespaces"
        started = {pid: runstate.start_time(pid) for pid in clients}
        pids = runstate.RunState.open(prefix).data["pids"]
        p.kill()
        p.wait(10)
        time.sleep(0.5)  # the shells see EOF on their pipes and exit
        assert any(runstate.alive(pid, s) for pid, s in started.items()), "client already gone"
        result = k8stopo("clean")
        assert result.returncode == 0, result.stderr
        assert not [pid for pid, s in started.items() if runstate.alive(pid, s)]
        assert_run_gone(prefix, pids)
    finally:
        if p.poll() is None:
            p.kill()


def test_two_runs_at_once_work_side_by_side() -> None:
    a = start("up", "--cni", "calico-bgp", "--nodes", "2", "--pods-per-node", "1")
    b = start("up", "--cni", "calico-bgp", "--nodes", "2", "--pods-per-node", "1")
    try:
        for p in (a, b):
            assert p.stdout is not None
            for line in p.stdout:
                if "cluster is up" in line:
                    break
            else:
                pytest.fail(f"a run did not come up: {p.stderr.read() if p.stderr else ''}")
        prefixes = set(runs_of(a.pid) + runs_of(b.pid))
        assert len(prefixes) == 2
        records = {pre: runstate.RunState.open(pre).data["pids"] for pre in prefixes}
    finally:
        for p in (a, b):
            p.send_signal(signal.SIGTERM)
        for p in (a, b):
            p.wait(60)
    assert a.returncode == b.returncode == 143
    for prefix, pids in records.items():
        assert_run_gone(prefix, pids)


def test_clean_keeps_on_record_what_it_could_not_remove(monkeypatch) -> None:
    state = runstate.RunState("test-left")
    state.track_netns(f"{state.prefix}-never-deletable")
    Path(f"/run/netns/{state.prefix}-never-deletable").parent.mkdir(exist_ok=True)
    # a file that `ip netns del` refuses (not a namespace mount) stands for a stuck netns
    blocker = Path(f"/run/netns/{state.prefix}-never-deletable")
    blocker.mkdir()
    try:
        _removed, left = state.remove_all()
        assert left == [f"netns {state.prefix}-never-deletable"]
        assert (runstate.STATE_ROOT / state.prefix / runstate.JOURNAL).exists()
        assert runstate.RunState.open(state.prefix).data["netns"] == [
            f"{state.prefix}-never-deletable"]
    finally:
        blocker.rmdir()
    _removed, left = runstate.RunState.open(state.prefix).remove_all()
    assert left == [] and not (runstate.STATE_ROOT / state.prefix).exists()
