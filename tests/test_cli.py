"""The command line as users meet it: bad input, up with the Mininet CLI, clean after a crash."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from k8stopo import cli, runstate

from conftest import REPO, assert_gone, k8stopo, run_dirs

pytestmark = pytest.mark.requires_root  # clusters, or commands that need root


@pytest.mark.parametrize("args, message", [
    (["up", "--cni", "weave-nope"], "unknown CNI variant 'weave-nope'"),
    (["up", "--cni", "weave-fastdp", "--mtu", "1400"], "does not fit in an underlay MTU of 1400"),
    (["up", "--cni", "host,calico-bgp"], "exactly one --cni"),
    (["bench", "--cni", "host,weave-sleeve", "--underlay", "ring", "--out", "x.csv"],
     "unknown underlay 'ring'"),
    (["up", "--cni", "host", "--underlay", "ring"], "unknown underlay 'ring'"),
    (["up", "--cni", "macvlan", "--pods-per-node", "300"], "do not fit"),
    (["up", "--cni", "docker-overlay", "--nodes", "3", "--pods-per-node", "90"], "do not fit"),
    (["up", "--cni", "calico-bgp", "--pods-per-node", "500"], "do not fit"),
    (["up", "--cni", "flannel-vxlan", "--mtu", "600"], "leaves no room"),
    (["up", "--cni", "host", "--nodes", "0"], "--nodes"),
    (["up", "--cni", "host", "--nodes", "two"], "invalid int value"),
    (["bench", "--cni", "host", "--scenarios", "pod-to-moon", "--out", "x.csv"],
     "unknown scenario 'pod-to-moon'"),
    (["bench", "--cni", "host", "--protocols", "sctp", "--out", "x.csv"],
     "unknown protocol 'sctp'"),
    (["bench", "--cni", "host", "--duration", "0", "--out", "x.csv"], "--duration"),
    (["bench", "--cni", "flannel-vxlan", "--pods-per-node", "300", "--out", "x.csv"],
     "do not fit"),
    (["plot", "no-such.csv", "--out", "plots"], "no such CSV file"),
    # an output path that cannot be created or written (root passes every access check)
    (["bench", "--cni", "host", "--out", "/proc/x/y.csv"], "cannot create anything in /proc"),
    (["bench", "--cni", "host", "--out", "b.csv", "--plots", "/sys/x"],
     "--plots /sys/x: cannot create anything in /sys"),
    (["scale", "--cni", "host", "--nodes", "2", "--out", "/sys/s.csv"],
     "cannot create anything in /sys"),
    (["plot", str(REPO / "tests" / "data" / "ping.txt"), "--out", "/proc/x"],
     "--out /proc/x: cannot create anything in /proc"),
])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(args, message, tmp_path) -> None:
    links, dirs = set(runstate.root_links()), run_dirs()
    result = k8stopo(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    new_links = set(runstate.root_links()) - links  # (other programs may add theirs meanwhile)
    assert not [l for l in new_links if l.startswith(runstate.PREFIX) or "-eth" in l]
    assert run_dirs() <= dirs  # none appeared (others may end meanwhile)
    assert list(tmp_path.iterdir()) == []


def test_up_cli_pings_a_pod_on_another_node_by_name() -> None:
    script = "pod-n1-0 ping -n -c 2 -W 2 pod-n3-1\nexit\n"
    result = k8stopo("up", "--cni", "calico-bgp", "--nodes", "3", "--pods-per-node", "2",
                     "--cli", input=script)
    assert result.returncode == 0, result.stderr
    pod_ip = next(l.split()[1] for l in result.stdout.splitlines() if l.strip().startswith("pod-n3-1"))
    shown = result.stdout + result.stderr  # Mininet's CLI prints on stderr
    assert f"PING {pod_ip}" in shown and "2 received" in shown, shown


def test_clean_removes_what_a_killed_run_left() -> None:
    before = run_dirs()
    proc = subprocess.Popen([sys.executable, "-m", "k8stopo", "up", "--cni", "calico-bgp"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "cluster is up" in line:
                break
        (prefix,) = run_dirs() - before
        manifest = runstate.RunState.open(prefix).data
        proc.kill()  # no teardown at all: a crash
        proc.wait(10)
        assert any(runstate.alive(p["pid"], p["start"]) for p in manifest["pids"])
        result = k8stopo("clean")
        assert result.returncode == 0 and prefix in result.stdout, result
        assert_gone(prefix, manifest["pids"])
        assert "nothing left" in k8stopo("clean").stdout
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_tears_the_cluster_down() -> None:
    before = run_dirs()
    proc = subprocess.Popen([sys.executable, "-m", "k8stopo", "up", "--cni", "flannel-vxlan"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "cluster is up" in line:
            break
    (prefix,) = run_dirs() - before
    manifest = runstate.RunState.open(prefix).data
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert_gone(prefix, manifest["pids"])


@pytest.mark.parametrize(("flags", "shown"), [([], False), (["-v"], True)])
def test_verbose_lets_our_info_lines_through(flags: list[str], shown: bool, tmp_path) -> None:
    """-v shows k8stopo's INFO lines (a Mininet logger's own level once hid them all)."""
    script = ("import logging, sys\nfrom k8stopo import cli, bench, cluster\n"
              f"cli.main({[*flags, 'plot', str(tmp_path / 'none.csv'), '--out', str(tmp_path)]!r})\n"
              "print(logging.getLogger('k8stopo.cluster').isEnabledFor(logging.INFO))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == str(shown), out.stderr


def test_a_daemon_that_fails_to_start_is_one_line_and_exit_1(
        broken_bird_conf: None, capsys: pytest.CaptureFixture[str]) -> None:
    """BIRD refuses its config (a template with a syntax error): `up` tears the cluster down
    and says so in one line that names BIRD, where, its complaint and its kept log; nothing
    else is left."""
    dirs = run_dirs()
    assert cli.main(["up", "--cni", "calico-bgp", "--nodes", "2", "--pods-per-node", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in err if line.startswith("k8stopo: failed: ")]
    assert failed == err[-1:], err  # one line, the last
    assert failed[0].startswith("k8stopo: failed: bird on n") and "syntax error" in failed[0]
    named = re.search(r"; log: (\S+)", failed[0])
    assert named, failed[0]
    log = Path(named.group(1))
    assert log.is_file() and "syntax error" in log.read_text()
    assert run_dirs() <= dirs
