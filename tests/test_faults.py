"""Faults injected during a bench run, and --resume of an interrupted one, on real clusters."""
from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import pytest
from test_bench import left_behind

from k8stopo import bench, cli, environment, faults, measure, proc
from k8stopo.cluster import Cluster
from k8stopo.spec import BenchSpec, ClusterSpec

from conftest import k8stopo, run_dirs

pytestmark = pytest.mark.requires_root  # clusters, or commands that need root

ENV = environment.Environment("k8stopo bench (test)", "k", "cpu", "nf_tables", "c")


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_faults_fail_what_they_cut_and_the_cluster_measures_normally_after(
        tmp_path: Path) -> None:
    spec = BenchSpec(cnis=("flannel-vxlan",),
                     scenarios=("pod-to-pod-same-node", "pod-to-pod-cross-node"),
                     protocols=("tcp", "icmp"), duration=1, repeat=2,
                     faults=("underlay-link-down", "server-stopped", "node-stopped"))
    out = tmp_path / "f.csv"
    before = run_dirs()
    run_id, failures = bench.run(spec, out, bench.clusters(spec), ENV, io.StringIO())
    assert failures == 0  # failing under a fault is the expected outcome, not a failed run
    assert not left_behind(before)
    rows = read(out)
    measurements: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    for r in rows:
        measurements.setdefault((r["repeat"], r["fault"], r["scenario"], r["protocol"]),
                                []).append(r)
    assert len(measurements) == 2 * (4 + 4 + 4 + 2)  # node-stopped: no same-node client
    failed = {k: rs[0]["error"] for k, rs in measurements.items() if rs[0]["metric"] == "failed"}
    for k, rs in measurements.items():  # a failure is one row, with its raw file
        assert rs[0]["metric"] != "failed" or len(rs) == 1
        assert (out.parent / rs[0]["raw_file"]).is_file()
    for repeat in ("0", "1"):
        # the underlay port of the server's node down: cross-node traffic fails, with why ...
        link = "underlay-link-down"
        assert "Connection timed out" in failed[(repeat, link, "pod-to-pod-cross-node", "tcp")]
        assert "no replies" in failed[(repeat, link, "pod-to-pod-cross-node", "icmp")]
        # ... and same-node traffic does not cross it
        same = measurements[(repeat, link, "pod-to-pod-same-node", "tcp")]
        assert float(next(r["value"] for r in same if r["metric"] == "throughput_bps")) > 0
        # a server killed once listening is refused; the pod's kernel still answers ping
        assert "Connection refused" in failed[(repeat, "server-stopped",
                                               "pod-to-pod-cross-node", "tcp")]
        assert (repeat, "server-stopped", "pod-to-pod-cross-node", "icmp") not in failed
        assert {k[3] for k in failed if k[:3] == (repeat, "node-stopped",
                                                  "pod-to-pod-cross-node")} == {"tcp", "icmp"}
    # every regular measurement succeeded, repeat 1's after repeat 0's faults were lifted
    assert not [k for k in failed if k[1] == ""]
    order = [(r["started_at"], r["repeat"], r["fault"]) for r in rows]
    last_fault = max(t for t, rep, f in order if rep == "0" and f)
    assert min(t for t, rep, f in order if rep == "1" and not f) >= last_fault
    assert {r["run_id"] for r in rows} == {run_id}


def test_node_stopped_freezes_the_nodes_daemons_and_lifting_restores_them() -> None:
    with Cluster(ClusterSpec("calico-bgp", pods_per_node=1)) as cluster:
        n2 = cluster.nodes[1]
        bird = cluster.variant.birds[n2.name]
        assert cluster.state is not None and cluster.state.cgroup is not None
        frozen = cluster.state.cgroup / f"stopped-{n2.name}"
        port, switch = cluster.underlay.switch_port(n2)
        with faults.injected("node-stopped", cluster, n2.pods[0]):
            assert "frozen 1" in (frozen / "cgroup.events").read_text()
            members = set((frozen / "cgroup.procs").read_text().split())
            assert {str(bird.pid), str(n2.pid), str(n2.pods[0].pid)} <= members
            assert "state DOWN" in proc.output(["ip", "link", "show", port], switch)
            with pytest.raises(measure.MeasurementError, match="timed out"):
                measure.measure(cluster.nodes[0].pods[0], n2.pods[0].ip, n2.pods[0], "tcp")
        assert not frozen.exists()
        assert str(bird.pid) in (cluster.state.cgroup / "cgroup.procs").read_text().split()
        assert bird.poll() is None
        assert json.loads(proc.output(["ip", "-j", "link", "show", port], switch))[0][
            "operstate"] == "UP"
        m = measure.measure(cluster.nodes[0].pods[0], n2.pods[0].ip, n2.pods[0], "icmp")
        assert {s.metric for s in m.samples} >= {"rtt_avg_ms"}


# --- --resume ------------------------------------------------------------------------------

ARGS = ("bench", "--cni", "host", "--scenarios", "host-to-host,pod-to-pod-same-node",
        "--protocols", "tcp,icmp", "--duration", "1")


def test_resume_measures_what_an_interrupted_run_lacks_under_its_run_id(tmp_path: Path) -> None:
    out = tmp_path / "b.csv"
    first = k8stopo(*ARGS, "--repeat", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr
    full = read(out)
    steps = {(r["scenario"], r["protocol"], r["repeat"]) for r in full}
    assert len(steps) == 2 * 2 * 2
    # as an interrupted run leaves it: repeat 0's rows, then a line cut short by the crash
    lines = out.read_text().splitlines(keepends=True)
    kept = [lines[0], *(l for l, r in zip(lines[1:], full) if r["repeat"] == "0")]
    out.write_text("".join(kept) + lines[-1][:40])
    raw_dir = out.parent / "b.raw" / full[0]["run_id"]
    for r in full:
        if r["repeat"] == "1":
            (out.parent / r["raw_file"]).unlink(missing_ok=True)
    orphan = raw_dir / "0099_host_left_by_a_crash.json"  # written, its rows never were
    orphan.write_text("{}")

    again = k8stopo(*ARGS, "--out", str(out), "--repeat", "2", "--resume")
    assert again.returncode == 0, again.stderr
    rows = read(out)
    assert {r["run_id"] for r in rows} == {full[0]["run_id"]}
    by_step: dict[tuple[str, str, str], set[str]] = {}
    for r in rows:
        by_step.setdefault((r["scenario"], r["protocol"], r["repeat"]), set()).add(r["raw_file"])
    assert set(by_step) == steps and all(len(files) == 1 for files in by_step.values())
    assert rows[:len(kept) - 1] == full[:len(kept) - 1]  # nothing rewritten
    new = [r for r in rows if r["repeat"] == "1"]
    assert all(Path(r["raw_file"]).name > orphan.name for r in new)  # numbering goes on
    assert orphan.read_text() == "{}"

    done = k8stopo(*ARGS, "--repeat", "2", "--resume", "--out", str(out))
    assert done.returncode == 0 and "already measured" in done.stdout, done.stderr
    assert read(out) == rows


@pytest.mark.parametrize("case, message", [
    ("no file", "holds no run to resume"), ("header only", "holds no run to resume"),
    ("other command", "which measures something else"),
    ("experiment elsewhere", "cannot be read again from here")])
def test_resume_refuses_before_anything_is_built(
        case: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.csv"
    if case == "header only":
        out.write_text(",".join(bench.results.COLUMNS) + "\n")
    elif case != "no file":
        recorded = [*ARGS, "--out", str(out)]
        if case == "other command":
            recorded[recorded.index("--duration") + 1] = "3"  # all else as this command
        else:  # a relative path that only the directory it was started in has
            recorded += ["--experiment", "elsewhere/default.yaml"]
        row = dict.fromkeys(bench.results.COLUMNS, "x") | {
            "repeat": "0", "run_id": "20261125T000000Z-0000",
            "command": shlex.join(["k8stopo", *recorded])}
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, list(row))
            w.writeheader()
            w.writerow(row)
    before = sorted(tmp_path.rglob("*"))

    def build(self: Cluster) -> Cluster:
        raise AssertionError(f"{self.spec.cni} was built")
    monkeypatch.setattr(Cluster, "__enter__", build)
    assert cli.main([*ARGS, "--out", str(out), "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and message in lines[0], lines
    assert sorted(tmp_path.rglob("*")) == before


def test_an_unknown_fault_is_refused_in_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*ARGS, "--out", str(tmp_path / "b.csv"), "--faults",
                     "underlay-link-down,switch-on-fire"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["k8stopo: error: unknown fault 'switch-on-fire' (known: underlay-link-down, "
                     "server-stopped, node-stopped)"]
    assert list(tmp_path.iterdir()) == []
