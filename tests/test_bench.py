"""The bench runner: the plan (what is measured, what is not and why), experiments as
files, rows and raw outputs end to end, appending, interruption, a failed build."""
from __future__ import annotations

import csv
import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from k8stopo import bench, cli, environment, experiment, measure, proc, results, runstate
from k8stopo.bench import not_measured, plan
from k8stopo.cluster import Cluster
from k8stopo.cni.base import Variant
from k8stopo.cni.flannel import FlannelVXLAN
from k8stopo.cni.host import HostNetwork
from k8stopo.spec import BenchSpec, ClusterSpec, SpecError

from conftest import REPO, interruptible, k8stopo, run_dirs

METRICS = {"tcp": {"throughput_bps", "retransmits", "cpu_sender_pct", "cpu_receiver_pct",
                   "cpu_s_per_gbit", "cpu_busy_pct"},
           "tcp_rr": {"transactions_per_s", "latency_p50_us", "latency_p90_us",
                      "latency_p99_us", "cpu_busy_pct"},
           "icmp": {"rtt_avg_ms", "rtt_min_ms", "rtt_max_ms", "rtt_p50_ms", "rtt_p99_ms",
                    "cpu_busy_pct"}}
FOUR = ("host-to-host", "pod-to-pod-same-node", "pod-to-pod-cross-node", "node-to-pod")
EXPERIMENTS = REPO / "experiments"


def left_behind(before: set[str]) -> set[str]:
    """Run directories created since ``before`` whose owner is gone: what our runs left.
    (Other k8stopo runs on the machine may come and go meanwhile; theirs have live owners.)"""
    left = set()
    for name in run_dirs() - before:
        try:
            owner = json.loads((runstate.STATE_ROOT / name / "manifest.json").read_text())["owner"]
        except (OSError, ValueError):  # gone meanwhile, or still being written by its owner
            continue
        if not runstate.alive(owner["pid"], owner["start"]):
            left.add(name)
    return left


def read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --- the plan ---------------------------------------------------------------------------

def test_plan_interleaves_variants_and_points_within_each_repeat() -> None:
    spec = BenchSpec(cnis=("flannel-vxlan", "calico-bgp"), scenarios=("host-to-host",),
                     protocols=("tcp",), repeat=2, sweep=("streams", (1, 4)))
    assert [(s.repeat, s.cni, s.point.streams) for s in plan(spec)] == [
        (0, "flannel-vxlan", 1), (0, "flannel-vxlan", 4), (0, "calico-bgp", 1),
        (0, "calico-bgp", 4), (1, "flannel-vxlan", 1), (1, "flannel-vxlan", 4),
        (1, "calico-bgp", 1), (1, "calico-bgp", 4)]
    assert all(s.point.sweep is None for s in plan(spec))


def test_hostnetwork_scenarios_identical_by_construction_are_measured_once() -> None:
    reasons = not_measured(HostNetwork, FOUR, nodes=2)
    assert set(reasons) == {"pod-to-pod-cross-node", "node-to-pod"}
    assert all("identical to host-to-host" in why for why in reasons.values())
    assert not_measured(FlannelVXLAN, FOUR, nodes=2) == {}
    spec = BenchSpec(cnis=("host", "flannel-vxlan"), scenarios=FOUR, protocols=("tcp",), repeat=1)
    assert [(s.cni, s.scenario) for s in plan(spec)] == [
        ("host", "host-to-host"), ("host", "pod-to-pod-same-node"),
        *(("flannel-vxlan", s) for s in FOUR)]
    assert bench.skipped_lines(spec) == [
        f"not measured: host {s}: {reasons[s]}" for s in ("pod-to-pod-cross-node", "node-to-pod")]


class Unroutable(Variant):  # docker-bridge's shape: pod IPs are private to their node
    name = "test-unroutable"
    pod_ip_routable = False


class NoOwnNode(Variant):  # macvlan's shape: the parent NIC does not see its children
    name = "test-no-own-node"
    reaches_own_node = False


def test_scenarios_impossible_by_design_follow_the_capability_flags() -> None:
    assert set(not_measured(Unroutable, FOUR, nodes=2)) == {"pod-to-pod-cross-node",
                                                            "node-to-pod"}
    assert all("not routable from other nodes" in why
               for why in not_measured(Unroutable, FOUR, nodes=2).values())
    # node-to-pod crosses nodes: a macvlan-like node reaches the *other* node's pods ...
    assert not_measured(NoOwnNode, FOUR, nodes=2) == {}
    # ... but on a one-node cluster the pod is on the client's own node
    assert not_measured(NoOwnNode, ("node-to-pod",), nodes=1) == {
        "node-to-pod": "impossible by design: a test-no-own-node node cannot reach its own pods"}


class NoNodeRoute(Variant):  # docker-overlay's shape: the overlay lives in its own namespaces
    name = "test-no-node-route"
    nodes_reach_pods = False


class OneSegment(Variant):  # flannel-host-gw's shape: routes via peers must be on-link
    name = "test-one-segment"
    routed_caveat = "needs one L2 segment"


def test_node_routes_and_the_routed_underlay_rule_out_what_their_flags_say() -> None:
    assert set(not_measured(NoNodeRoute, FOUR, nodes=2)) == {"node-to-pod"}
    assert not_measured(OneSegment, FOUR, nodes=2) == {}  # one segment: nothing to say
    routed = not_measured(OneSegment, FOUR, nodes=3, underlay="routed")
    assert set(routed) == {"pod-to-pod-cross-node", "node-to-pod"}  # n1 and n3: a router apart
    assert all("routed underlay: needs one L2 segment" in why for why in routed.values())
    assert not_measured(FlannelVXLAN, FOUR, nodes=3, underlay="routed") == {}


def test_service_scenarios_are_left_out_where_kube_proxy_cannot_forward() -> None:
    services = ("pod-to-service", "pod-to-nodeport")
    assert set(not_measured(NoNodeRoute, services, nodes=2)) == set(services)
    assert set(not_measured(NoOwnNode, services, nodes=2)) == set(services)
    assert not_measured(FlannelVXLAN, services, nodes=2) == {}


def test_environment_columns_parse_what_the_machine_says() -> None:
    assert environment.iptables_mode("iptables v1.8.9 (nf_tables)\n") == "nf_tables"
    assert environment.iptables_mode("iptables v1.8.7 (legacy)\n") == "legacy"
    assert environment.iptables_mode("") == "unknown"
    assert environment.cpu_model("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n") == \
        "Intel(R) Xeon(R) Processor"
    assert environment.cpu_model("processor : 0\n") == "unknown"


# --- experiments as files -------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_experiments_load_and_check(path: Path) -> None:
    settings = experiment.load(path)
    assert settings["experiment"] == path.stem
    # every variant this kernel runs; a fault experiment names a few (a fault costs seconds)
    assert settings["cni"] == "all" or "faults" in settings
    spec = BenchSpec(cnis=("host", "flannel-vxlan"),
                     scenarios=tuple(settings["scenarios"].split(",")),
                     protocols=tuple(settings["protocols"].split(",")),
                     **{k: settings[k] for k in ("duration", "repeat", "sweep")})
    spec.check()
    assert "host-to-host" in spec.scenarios  # every ratio is paired with it


def test_default_experiment_is_what_make_bench_promises() -> None:
    s = experiment.load(EXPERIMENTS / "default.yaml")
    assert s["scenarios"].split(",") == list(FOUR)
    assert s["protocols"].split(",") == ["tcp", "tcp_rr", "icmp"]
    assert s["repeat"] == 2 and s["budget"] == "8m" and s["sweep"] is None
    assert experiment.load(EXPERIMENTS / "offloads.yaml")["sweep"] == ("offloads", ("on", "off"))
    assert "udp" in experiment.load(EXPERIMENTS / "full.yaml")["protocols"]


@pytest.mark.parametrize("text, message", [
    ("cni: all\nrepeats: 3\n", "unknown key 'repeats'"),
    ("repeat: three\n", "repeat must be an integer, not 'three'"),
    ("repeat: true\n", "repeat must be an integer"),
    ("cni: [host, weave-nope]\n", "unknown CNI variant 'weave-nope'"),
    ("scenarios: [pod-to-moon]\n", "unknown scenario 'pod-to-moon'"),
    ("protocols: tcp\noffloads: maybe\n", "offloads must be on or off"),
    ("sweep: {streams: [1, 2], mtu: [1500]}\n", "exactly one parameter"),
    ("sweep: {nodes: [2, 3]}\n", "cannot sweep 'nodes'"),
    ("streams: 2\nsweep: {streams: [1, 2]}\n", "both set and swept"),
    ("sweep: {mtu: 9000}\n", "non-empty list"),
    ("- a list\n", "YAML mapping"),
    ("cni: [host\n", "not valid YAML"),
])
@pytest.mark.requires_root
def test_bad_experiment_exits_2_before_anything_is_built(
        text: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        experiment.load(path)

    def build(self: Cluster) -> Cluster:
        raise AssertionError(f"{self.spec.cni} was built")
    monkeypatch.setattr(Cluster, "__enter__", build)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--experiment", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], lines
    assert list(tmp_path.iterdir()) == [path]  # no CSV, no raw directory, no plots


@pytest.mark.requires_root
def test_flags_override_the_experiment_but_not_its_sweep(tmp_path: Path) -> None:
    result = k8stopo("bench", "--experiment", str(EXPERIMENTS / "mtu.yaml"), "--mtu", "9000",
                     cwd=tmp_path)
    assert result.returncode == 2 and "--mtu conflicts with the experiment's sweep" in \
        result.stderr
    result = k8stopo("bench", "--experiment", str(EXPERIMENTS / "default.yaml"),
                     "--msg-size", "5", cwd=tmp_path)
    assert result.returncode == 2 and "--msg-size must be between 14" in result.stderr


# --- end to end ---------------------------------------------------------------------------

@pytest.mark.requires_root
def test_bench_rows_raw_outputs_of_each_run_and_appending(tmp_path: Path) -> None:
    """Two runs append to one CSV; run 1's raw files still hold run 1's values."""
    out, plots = tmp_path / "runs" / "bench.csv", tmp_path / "plots"
    args = ["bench", "--cni", "host,flannel-vxlan", "--scenarios",
            "host-to-host,pod-to-pod-cross-node", "--protocols", "tcp,tcp_rr,icmp",
            "--duration", "1", "--out", str(out)]
    before = run_dirs()
    first = k8stopo(*args, "--repeat", "2", "--plots", str(plots))
    assert first.returncode == 0, first.stderr
    assert "not measured: host pod-to-pod-cross-node: identical to host-to-host" in first.stderr
    assert not left_behind(before)  # every cluster torn down
    rows = read(out)
    assert set(rows[0]) == set(results.COLUMNS) | set(bench.EXTRA_COLUMNS)
    seen: dict[tuple, set] = {}
    for row in rows:
        seen.setdefault((row["cni"], row["scenario"], row["protocol"], row["repeat"]),
                        set()).add(row["metric"])
        assert row["raw_file"].startswith(f"bench.raw/{row['run_id']}/")
        assert row["kernel"] and row["k8stopo_version"] and row["run_id"] and row["commit"]
        assert row["iptables_mode"] in ("nf_tables", "legacy") and row["cpu_model"]
        assert row["command"].startswith("k8stopo bench --cni host,flannel-vxlan")
        assert row["offloads"] == "on" and row["experiment"] == ""
        assert row["msg_size"] == ("64" if row["protocol"] == "tcp_rr" else "")
        assert row["udp_bandwidth"] == ""
    # host: pod-to-pod-cross-node is host-to-host by construction, measured once
    assert len(seen) == (1 + 2) * 3 * 2
    for (cni, scenario, protocol, repeat), metrics in seen.items():
        assert metrics == METRICS[protocol]
    pod_rows = [r for r in rows if r["cni"] == "flannel-vxlan" and r["scenario"] ==
                "pod-to-pod-cross-node"]
    assert {r["mtu"] for r in pod_rows} == {"1450"}
    assert {r["client"] for r in pod_rows} == {"pod-n1-0"}
    # interleaved: every variant's repeat 0 was measured before any repeat 1
    order = [(r["started_at"], int(r["repeat"])) for r in rows]
    assert max(t for t, rep in order if rep == 0) <= min(t for t, rep in order if rep == 1)
    assert (plots / "tcp_throughput_normalised.png").stat().st_size > 0

    second = k8stopo(*args, "--repeat", "1")
    assert second.returncode == 0, second.stderr
    again = read(out)
    assert again[:len(rows)] == rows  # never overwritten
    assert len({r["run_id"] for r in again}) == 2
    # every raw file belongs to one run: run 1's still parses to run 1's values, each file
    # to the values of its rows (the metrics its tool gives; CPU shares come from /proc)
    compared: Counter[str] = Counter()
    for row in rows:
        raw = (out.parent / row["raw_file"]).read_text()
        parse = {"tcp": lambda t: measure.parse_iperf3(t, "tcp"), "icmp": measure.parse_ping,
                 "tcp_rr": measure.parse_sockperf}[row["protocol"]]
        values = {s.metric: s.value for s in parse(raw)}
        if row["metric"] in values:
            assert values[row["metric"]] == float(row["value"]), row
            compared[row["raw_file"]] += 1
    assert set(compared) == {r["raw_file"] for r in rows}  # no raw file went unchecked
    assert min(compared.values()) >= 3  # e.g. ping's five RTTs, iperf3's throughput and more
    assert {r["raw_file"] for r in again[len(rows):]}.isdisjoint({r["raw_file"] for r in rows})


@pytest.mark.requires_root
def test_budget_rounds_measure_only_what_the_verdict_needs(tmp_path: Path) -> None:
    """After the repeats, verdict rounds add host-to-host and cross-node TCP only, as ordinary
    rows of the same run (repeat going on); the run ends with its few lines, no WARNING."""
    out, plots = tmp_path / "b.csv", tmp_path / "plots"
    before = run_dirs()
    done = k8stopo("bench", "--cni", "flannel-vxlan,flannel-host-gw", "--scenarios",
                   "host-to-host,pod-to-pod-same-node,pod-to-pod-cross-node", "--protocols",
                   "tcp,icmp", "--duration", "1", "--repeat", "2", "--budget", "40s",
                   "--out", str(out), "--plots", str(plots))
    assert done.returncode == 0, done.stderr
    assert not left_behind(before)
    rows = read(out)
    assert len({r["run_id"] for r in rows}) == 1
    extra = [r for r in rows if int(r["repeat"]) >= 2]
    assert {(r["scenario"], r["protocol"]) for r in extra} <= {
        ("host-to-host", "tcp"), ("pod-to-pod-cross-node", "tcp")}
    lines = done.stdout.strip().splitlines()
    assert lines[-2].startswith("verdict: ") and "pairs resolved" in lines[-2]
    assert lines[-1].startswith("noise: ") and "WARNING" not in done.stderr
    tiers = read(plots / "verdict.csv")
    assert {r["cni"] for r in tiers} == {"flannel-vxlan", "flannel-host-gw"}
    rounds = 2 + len({r["repeat"] for r in extra})
    assert {int(r["rounds"]) for r in tiers} == {rounds}


@pytest.mark.requires_root
def test_interrupted_bench_keeps_its_rows_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.csv"
    before = run_dirs()
    proc_ = subprocess.Popen(
        [sys.executable, "-m", "k8stopo", "bench", "--cni", "flannel-host-gw,calico-bgp",
         "--scenarios", "pod-to-pod-cross-node", "--protocols", "icmp", "--duration", "1",
         "--repeat", "20", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(read(out)) < 12):
        time.sleep(0.2)
    proc_.send_signal(signal.SIGINT)
    _, err = proc_.communicate(timeout=120)
    assert proc_.returncode == 130, err
    rows = read(out)
    assert len(rows) >= 12 and len(rows) % 6 == 0  # whole measurements only
    assert all(float(r["value"]) > 0 for r in rows if r["metric"] == "rtt_avg_ms")
    assert not left_behind(before)


@pytest.mark.requires_root
def test_a_variant_that_fails_to_build_is_recorded_failed_and_the_others_measured(
        tmp_path: Path, broken_bird_conf: None, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """calico-bgp's BIRD config is refused by BIRD's own parser (a template with a syntax
    error): that variant's planned measurements become ``failed`` rows, host is measured,
    exit 1, and the user reads one line per failure."""
    out = tmp_path / "b.csv"
    before = run_dirs()
    status = cli.main(["bench", "--cni", "calico-bgp,host", "--scenarios",
                       "host-to-host,pod-to-pod-cross-node", "--protocols", "icmp,tcp",
                       "--duration", "1", "--repeat", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 1, err
    rows = read(out)
    failed = [r for r in rows if r["cni"] == "calico-bgp"]
    # every planned calico-bgp measurement, one row each, none of them a value
    assert sorted((r["scenario"], r["protocol"]) for r in failed) == sorted(
        (s, p) for s in ("host-to-host", "pod-to-pod-cross-node") for p in ("icmp", "tcp"))
    assert {r["metric"] for r in failed} == {results.FAILED}
    for row in failed:
        assert "bird" in row["error"] and "syntax error" in row["error"], row["error"]
        assert row["client"] == row["server"] == row["mtu"] == ""
        assert "syntax error" in (tmp_path / row["raw_file"]).read_text()
    measured = [r for r in rows if r["cni"] == "host"]
    assert {r["metric"] for r in measured} == METRICS["icmp"] | METRICS["tcp"]
    assert all(float(r["value"]) > 0 for r in measured if r["metric"] == "rtt_avg_ms")
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(said) == 1 and said[0].startswith("calico-bgp (mtu 1500, offloads on) failed "
                                                 "to build: ") and "bird" in said[0], said
    assert "\n" not in said[0]  # one line, whatever BIRD printed
    assert err.rstrip().splitlines()[-1] == \
        "k8stopo: 1 measurement(s) or build(s) failed; see the log above"
    assert not left_behind(before)


@pytest.mark.requires_root
def test_offloads_off_on_every_veth_of_the_wire() -> None:
    with Cluster(ClusterSpec("flannel-vxlan", offloads="off")) as cluster:
        holders = [cluster.underlay.net["ul"].pid, *(n.pid for n in cluster.nodes),
                   *(p.pid for p in cluster.pods)]
        checked = 0
        for pid in holders:
            for dev in json.loads(proc.output(["ip", "-j", "link", "show", "type", "veth"], pid)):
                features = proc.output(["ethtool", "-k", dev["ifname"]], pid)
                for name in ("tcp-segmentation-offload", "generic-segmentation-offload",
                             "generic-receive-offload", "tx-checksumming", "rx-checksumming"):
                    assert f"{name}: off" in features, (pid, dev["ifname"], name)
                checked += 1
        # 2 node NICs + 2 switch ports + 4 pods' eth0 + their 4 host ends
        assert checked == 12
    with Cluster(ClusterSpec("host")) as plain:  # the default leaves the kernel's features
        features = plain.nodes[0].output(["ethtool", "-k", plain.nodes[0].intf])
        assert "tcp-segmentation-offload: on" in features
