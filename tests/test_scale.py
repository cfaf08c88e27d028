"""`k8stopo scale`: its rows, its failures as rows, and the teardown that makes it fast."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from k8stopo import environment, node, plots, proc, results, scale
from k8stopo.cluster import Cluster
from k8stopo.cni.base import Variant
from k8stopo.cni.calico import CalicoBird
from k8stopo.errors import NotReady
from k8stopo.spec import ClusterSpec

from conftest import assert_gone

pytestmark = pytest.mark.requires_root  # clusters, or commands that need root


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
                   "withdraw_ms", "rejoin_ms", "teardown_ms", "bird_rss_per_node",
                   "teardown_agents_ms", "teardown_pods_ms",
                   "teardown_mininet_ms", "teardown_record_ms"):
        assert values[metric] > 0, metric
    # BIRD's own accounts from /proc (CPU in clock ticks: three nodes' BIRDs may not have
    # used one yet); the busiest node's at least the average
    assert 0 <= values["bird_cpu_s_per_node"] <= values["bird_cpu_s_max_node"]
    assert 0 < values["bird_rss_per_node"] <= values["bird_rss_max_node"]
    assert values["netlink_drop_birds"] == 0  # three nodes never overflow the 16 MiB buffer
    phases = [values[f"teardown_{p}_ms"] for p in ("agents", "pods", "mininet", "record")]
    assert sum(phases) <= values["teardown_ms"]  # the phases are parts of the whole
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
    def measure_one(spec: ClusterSpec, cls: type[Variant]) -> list[tuple[str, str, scale.Sample]]:
        if spec.nodes == 300:
            raise NotReady("BGP did not converge in 90s: 12 of 300 nodes\nstill lack")
        return [("bring-up", "build_ms", scale.Sample("", 5.0, "ms"))]

    monkeypatch.setattr(scale, "measure_one", measure_one)
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
    the run is left; a BIRD stopped alone (calico-node's shutdown) shuts down on SIGTERM."""
    with Cluster(ClusterSpec(cni="calico-bgp", nodes=3, pods_per_node=1)) as cluster:
        variant = cluster.variant
        assert isinstance(variant, CalicoBird) and cluster.state is not None
        birds = list(variant.birds.values())
        n3 = cluster.nodes[2]
        variant.stop_bird(n3)
        assert variant.birds[n3.name].returncode == 0  # SIGTERM: BIRD shut down on its own
        variant.start_bird(n3)  # again, with the same config, ready once its socket greets
        assert variant.birds[n3.name].running
        prefix, pids = cluster.state.prefix, list(cluster.state.data["pids"])
    assert all(b.returncode == -9 for b in birds), [b.returncode for b in birds]
    assert_gone(prefix, pids)


def test_the_scale_table_has_phases_bird_accounts_and_netlink_drops() -> None:
    """The table says what the rows say: build and teardown phases, BIRD's CPU and memory
    per node, and how many BIRDs saw the kernel drop netlink messages."""
    values = {"build_ms": 4000.0, "underlay_ms": 1500.0, "agents_ms": 1000.0,
              "pods_ms": 500.0, "ready_ms": 1000.0, "converge_ms": 900.0,
              "bird_cpu_s_per_node": 0.25, "bird_rss_per_node": 2048.0,
              "netlink_drop_birds": 3.0, "teardown_ms": 800.0, "teardown_agents_ms": 100.0,
              "teardown_pods_ms": 200.0, "teardown_mininet_ms": 400.0}
    df = pd.DataFrame([{"protocol": "control", "cni": "calico-bgp", "nodes": 4,
                        "pods_per_node": 0, "bgp_mode": "rr1", "metric": metric,
                        "value": value} for metric, value in values.items()])
    header, _, row = plots.scale_markdown(df).splitlines()
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in row.strip("|").split("|")]))
    assert cells["underlay s"] == "1.5" and cells["ready s"] == "1.0"
    assert cells["BIRD CPU s/node"] == "0.25" and cells["BIRD MiB/node"] == "2.0"
    assert cells["BIRDs with netlink drops"] == "3"
    assert len(cells) == len(header.strip("|").split("|"))  # no heading twice
    assert cells["pods s"] == "0.5" and cells["teardown pods s"] == "0.20"
    assert cells["teardown daemons s"] == "0.10" and cells["teardown Mininet s"] == "0.40"
    fig = plots.scale_figure(df)
    assert fig is not None
    titles = {ax.get_title() for ax in fig.axes}
    assert {"build per phase", "teardown per phase", "BIRD CPU per node",
            "BIRDs with netlink drops"} <= titles


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
