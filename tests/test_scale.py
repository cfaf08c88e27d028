"""`k8stopo scale`: its rows, its failures as rows, and the teardown that makes it fast."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from k8stopo import environment, node, proc, results, scale
from k8stopo.cluster import Cluster
from k8stopo.spec import ClusterSpec

from conftest import assert_gone


def test_scale_rows_of_a_reflected_cluster(tmp_path: Path) -> None:
    """Three nodes with one reflector: the reflector holds two sessions, each client one,
    so four session ends; every phase, BGP event and the teardown is a row."""
    out = tmp_path / "scale.csv"
    env = environment.Environment.here("k8stopo scale (test)")
    run_id, failures = scale.run(scale.ScaleSpec("calico-bgp", (3,), 0, ("rr1",)), out, env)
    assert failures == 0
    rows = pd.read_csv(out)
    assert set(rows.run_id) == {run_id}
    values = rows.set_index("metric").value
    assert values["bgp_sessions_total"] == 4
    assert values["bgp_sessions_max_per_node"] == 2
    for metric in ("underlay_ms", "agents_ms", "ready_ms", "build_ms", "converge_ms",
                   "withdraw_ms", "rejoin_ms", "teardown_ms", "bird_rss_per_node"):
        assert values[metric] > 0, metric
    # the witness (n3) gets its two peers' blocks one at a time or both at once
    assert 0 < values["blocks_50pct_ms"] <= values["blocks_90pct_ms"] <= values["converge_ms"]
    assert set(rows.bgp_mode) == {"rr1"} and set(rows.nodes) == {3}
    # where it was measured, as on bench's rows
    assert set(rows.command) == {"k8stopo scale (test)"} and set(rows.commit) == {env.commit}
    assert set(rows.cpu_model) == {env.cpu_model} and set(rows.iptables_mode) == {env.iptables_mode}


def test_a_cluster_that_fails_is_a_failed_row(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A size that does not converge is a result too: a ``failed`` row with the reason,
    and the sizes after it are still measured."""
    def measure_one(spec: ClusterSpec) -> list[tuple[str, str, scale.Sample]]:
        if spec.nodes == 300:
            raise TimeoutError("BGP did not converge in 90s: 12 of 300 nodes\nstill lack")
        return [("bring-up", "build_ms", scale.Sample("", 5.0, "ms"))]

    monkeypatch.setattr(scale, "measure_one", measure_one)
    monkeypatch.setattr(scale, "_bird", lambda cni: True)
    out = tmp_path / "scale.csv"
    env = environment.Environment("k8stopo scale (test)", "k", "cpu", "nf_tables", "c")
    _, failures = scale.run(scale.ScaleSpec("calico-bgp", (300, 10), 0, ("mesh",)), out, env)
    assert failures == 1
    rows = pd.read_csv(out, keep_default_na=False).set_index("nodes")
    assert rows.loc[300, "metric"] == results.FAILED
    assert rows.loc[300, "error"] == "BGP did not converge in 90s: 12 of 300 nodes still lack"
    assert rows.loc[10, "metric"] == "build_ms" and rows.loc[10, "error"] == ""


def _links(netns: str) -> set[str]:
    shown = json.loads(proc.output(["ip", "-j", "link", "show"], netns))
    return {link["ifname"] for link in shown}


def test_delete_links_takes_the_named_links_and_no_other(tmp_path: Path) -> None:
    """The links named go in one group deletion, their veth peers with them; a link not
    named stays, and so does one whose name is already gone."""
    ns = f"k8tdl{tmp_path.name[-6:]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for i in range(3):
            proc.run(["ip", "link", "add", f"d{i}", "type", "veth", "peer", "name", f"p{i}"], ns)
        node.delete_links(ns, ["d0", "p1", "absent"])
        assert _links(ns) == {"lo", "d2", "p2"}
        group = json.loads(proc.output(["ip", "-j", "-d", "link", "show", "d2"], ns))[0]["group"]
        assert group == "default"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_teardown_kills_birds_and_leaves_nothing() -> None:
    """A whole cluster's BIRDs are killed at once at teardown (no goodbyes), and nothing of
    the run is left."""
    with Cluster(ClusterSpec(cni="calico-bgp", nodes=3, pods_per_node=1)) as cluster:
        birds = list(cluster.variant.birds.values())
        assert cluster.state is not None
        prefix, pids = cluster.state.prefix, list(cluster.state.data["pids"])
    assert all(b.returncode == -9 for b in birds), [b.returncode for b in birds]
    assert_gone(prefix, pids)


def test_netns_cleanup_is_seen_by_the_kernel_workers_names(tmp_path: Path) -> None:
    """Busy while a kernel worker runs a ``netns`` item, idle otherwise (a fake /proc)."""
    for pid, comm in ((10, "kworker/u8:2-events_unbound"), (11, "bird"), (12, "ksoftirqd/0")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
    assert not scale.netns_cleanup_busy(tmp_path)
    (tmp_path / "13").mkdir()
    (tmp_path / "13" / "comm").write_text("kworker/u8:0+netns\n")
    assert scale.netns_cleanup_busy(tmp_path)


def test_the_kernel_is_seen_freeing_namespaces_and_then_idle() -> None:
    """Two hundred namespaces deleted at once keep the kernel's netns worker busy for a
    while; wait_netns_cleanup returns once it is idle."""
    names = [f"k8tnc{os.getpid() % 10000}x{i}" for i in range(200)]
    try:
        proc.run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names))
    finally:
        proc.run(["ip", "-force", "-batch", "-"], check=False,
                 input="".join(f"netns del {n}\n" for n in names))
    seen = False
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        seen = scale.netns_cleanup_busy()
    assert seen
    scale.wait_netns_cleanup()
    assert not scale.netns_cleanup_busy()
