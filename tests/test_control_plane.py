"""The control-plane kinds of ``k8stopo bench``: kube-proxy rule scaling and no-retry, DNS,
policy cost. Their files are checked before anything is built; a run appends rows with the
environment columns to a CSV another run already wrote; SIGTERM in the middle of a run
keeps every row measured before it and leaves nothing behind, and --resume completes it
without writing a value twice; a broken cluster is a failed row and the others go on."""
from __future__ import annotations

import csv
import signal
import time
from pathlib import Path

import pytest
from test_reliability import assert_run_gone, runs_of, start

from k8stopo import controlplane, experiment, measure, runstate
from k8stopo.environment import Environment
from k8stopo.errors import RunError
from k8stopo.kubeproxy.nftables import NftablesProxy
from k8stopo.spec import SpecError

from conftest import REPO, k8stopo, run_dirs

SHIPPED = sorted((REPO / "experiments" / "control-plane").glob("*.yaml"))
#: per kind: a complete small run, and a longer one that is interrupted after its first row
SMALL = {
    "kube-proxy-rules": ("kind: kube-proxy-rules\nmodes: [iptables, nftables]\n"
                         "services: [2, 5]\nconnections: 20\nresyncs: 1\n",
                         "kind: kube-proxy-rules\nservices: [2, 5, 10, 20, 40]\n"
                         "connections: 50\nresyncs: 2\n"),
    "kube-proxy-no-retry": ("kind: kube-proxy-no-retry\nmodes: [iptables]\nattempts: 6\n"
                            "hung_attempts: 3\n",
                            "kind: kube-proxy-no-retry\nattempts: 30\nhung_attempts: 10\n"),
    "dns": ("kind: dns\nservices: 20\nhit_names: 10\nduration: 1\nrepeat: 1\n"
            "outstanding: [1]\nlookup_count: 5\nnames: [web, example.com]\n",
            "kind: dns\nservices: 20\nhit_names: 10\nduration: 2\nrepeat: 5\n"
            "outstanding: [1, 10]\nlookup_count: 20\n"),
    "policy-cost": ("kind: policy-cost\ncni: [calico-bgp]\npolicies: [0, 3]\nduration: 1\n"
                    "repeat: 1\n",
                    "kind: policy-cost\ncni: [calico-bgp, weave-fastdp]\n"
                    "policies: [0, 1, 2, 3]\nduration: 1\nrepeat: 2\n"),
}
#: per kind: the clusters (parts) of the longer run, and whether its rows are all there
COMPLETE = {
    # 3 modes × 5 counts × (build, 2 resyncs, 2 connect figures to 2 Services)
    "kube-proxy-rules": (15, lambda rows: len(rows) == 15 * (1 + 2 + 4)),
    "kube-proxy-no-retry": (3, lambda rows: len(rows) == 3 * 4),  # 3 modes × 4 phases
    # 5 repeats × (2 in flight × 3 conditions × 3 dnsperf metrics + 2 names × 3)
    "dns": (1, lambda rows: len(rows) == 5 * (2 * 3 * 3 + 2 * 3)),
    # 2 variants × 4 counts: the programming rows, then 2 repeats of 3 protocols
    "policy-cost": (2, lambda rows: {(r["cni"], r["policies"], r["repeat"], r["protocol"])
                                     for r in rows} == {
        (c, str(n), str(r), proto) for c in ("calico-bgp", "weave-fastdp") for n in range(4)
        for r, proto in [(0, "control"), *((r, x) for r in (0, 1)
                                           for x in ("tcp_syn", "tcp", "tcp_rr"))]}),
}
ENVIRONMENT = ("kernel", "k8stopo_version", "cpu_model", "iptables_mode", "commit", "command")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- the files (no root, nothing built) ------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_control_plane_experiments_load_as_their_kind(path: Path) -> None:
    loaded = experiment.load(path)
    assert loaded["kind"] in controlplane.KINDS and loaded["experiment"] == path.stem
    assert isinstance(loaded["params"], controlplane.kind(loaded["kind"]).params)
    assert {p.stem for p in SHIPPED} >= set(controlplane.KINDS)  # one file per kind


@pytest.mark.parametrize(("text", "needle"), [
    ("kind: bogus\n", "unknown kind 'bogus' (known: bench, kube-proxy-rules"),
    ("kind: [dns]\n", "kind must be a string"),
    ("kind: dns\nservice: 10\n", "unknown key 'service' for kind dns"),
    ("kind: dns\nrepeat: '3'\n", "repeat must be int, not '3'"),
    ("kind: dns\nrepeat: true\n", "repeat must be int, not True"),
    ("kind: kube-proxy-rules\nservices: []\n", "services must be a non-empty list of int"),
    ("kind: kube-proxy-rules\nmodes: [ipvs]\n", "unknown --proxy-mode 'ipvs'"),
    ("kind: kube-proxy-no-retry\ncni: all\n", "cni: one variant, not 'all'"),
    ("kind: kube-proxy-no-retry\nattempts: 0\n", "attempts must be 1 to 10000"),
    ("kind: policy-cost\ncni: [flannel-vxlan]\n", "flannel-vxlan does not enforce"),
    ("kind: policy-cost\npolicies: [-1]\n", "policies must be 0 to 5000"),
    ("kind: policy-cost\nsweep: {streams: [1, 2]}\n", "unknown key 'sweep' for kind policy-cost"),
])
def test_bad_kind_or_parameter_is_one_line_naming_the_file(tmp_path: Path, text: str,
                                                          needle: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        experiment.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message


def test_flags_override_parameters_the_kind_has_and_refuse_the_others() -> None:
    rules = controlplane.kind("kube-proxy-rules")
    p = rules.params()
    changed = controlplane.with_flags(rules, p, {"repeat": 2, "cni": "calico-bgp"})
    assert (changed.repeat, changed.cni, changed.services) == (2, "calico-bgp", p.services)
    with pytest.raises(SpecError, match="--nodes does not apply to a kube-proxy-rules"):
        controlplane.with_flags(rules, p, {"nodes": 3})
    with pytest.raises(SpecError, match="takes one value"):
        controlplane.with_flags(rules, p, {"cni": "calico-bgp,flannel-vxlan"})
    cost = controlplane.kind("policy-cost")
    assert controlplane.with_flags(cost, cost.params(), {"cni": "weave-fastdp,calico-bgp"}
                                   ).cni == ("weave-fastdp", "calico-bgp")
    with pytest.raises(SpecError, match="does not enforce"):
        controlplane.with_flags(cost, cost.params(), {"cni": "flannel-vxlan"})


def test_percentile_is_the_nearest_observed_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert [measure.percentile(values, p) for p in (1, 20, 21, 50, 99, 100)] == \
        [1.0, 1.0, 2.0, 3.0, 5.0, 5.0]
    assert measure.percentile(range(1, 201), 99) == 198
    with pytest.raises(ValueError):
        measure.percentile([], 50)


@pytest.mark.requires_root
def test_bad_file_exits_2_with_one_line_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("kind: dns\nnodes: 0\n")
    out = tmp_path / "out" / "rows.csv"
    res = k8stopo("bench", "--experiment", str(path), "--out", str(out))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("k8stopo: error: ") and not out.parent.exists()
    path.write_text(SMALL["dns"][0])
    for flags, needle in ((["--scenarios", "host-to-host"], "--scenarios does not apply"),
                          (["--resume"], "holds no dns run to resume"),
                          (["--proxy-mode", "nftables"], "--proxy-mode does not apply")):
        res = k8stopo("bench", "--experiment", str(path), "--out", str(out), *flags)
        assert res.returncode == 2 and needle in res.stderr, res.stderr
        assert not out.parent.exists()


# -- real runs -------------------------------------------------------------------------

@pytest.mark.requires_root
@pytest.mark.parametrize("kind", SMALL)
def test_a_run_appends_sigterm_keeps_every_row_leaves_nothing_and_resume_completes(
        kind: str, tmp_path: Path) -> None:
    small, longer = (tmp_path / "small.yaml", tmp_path / "longer.yaml")
    small.write_text(SMALL[kind][0])
    longer.write_text(SMALL[kind][1])
    out, plots = tmp_path / "rows.csv", tmp_path / "plots"
    first = k8stopo("bench", "--experiment", str(small), "--out", str(out), "--plots",
                    str(plots), timeout=600)
    assert first.returncode == 0, first.stderr
    rows = _rows(out)
    assert rows and {r["kind"] for r in rows} == {kind} and len({r["run_id"] for r in rows}) == 1
    for column in ENVIRONMENT:
        assert all(r[column] and r[column] != "unknown" for r in rows), column
    assert all(r["command"].startswith("k8stopo bench --experiment") for r in rows)
    assert all(r["experiment"] == "small" for r in rows)
    drawn = [line.strip() for line in first.stdout.splitlines()[1:]]
    assert drawn and all(Path(p).is_file() and Path(p).parent == plots for p in drawn)
    again = k8stopo("plot", str(out), "--out", str(tmp_path / "again"))  # the kind's charts
    assert again.returncode == 0, again.stderr
    assert sorted(Path(p).name for p in again.stdout.split()) == sorted(Path(p).name
                                                                        for p in drawn)

    # the second run appends to the same CSV and is stopped after its first row
    p = start("bench", "--experiment", str(longer), "--out", str(out), "--plots", str(plots))
    seen: dict[str, list[dict]] = {}  # every cluster run of the command, with its processes
    second: list[dict[str, str]] = []
    deadline = time.monotonic() + 300
    try:
        while not second and time.monotonic() < deadline and p.poll() is None:
            for prefix in runs_of(p.pid):
                try:
                    seen[prefix] = runstate.RunState.open(prefix).data["pids"]
                except (FileNotFoundError, KeyError):
                    continue
            second = _rows(out)[len(rows):]
            time.sleep(0.1)
        assert second and p.poll() is None, "the second run ended before its first row"
        before = out.read_bytes()
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err[-2000:]
    after = out.read_bytes()
    assert after.startswith(before), "a row measured before the signal was lost or changed"
    interrupted = _rows(out)
    assert interrupted[:len(rows)] == rows and len({r["run_id"] for r in interrupted}) == 2
    with out.open(newline="") as f:
        lines = list(csv.reader(f))
    assert all(len(line) == len(lines[0]) for line in lines)  # whole rows only
    assert seen, "no cluster of the second run was seen"
    for prefix, pids in seen.items():
        assert_run_gone(prefix, pids)

    # --resume measures what the interrupted run lacks, under its id, and nothing twice
    resumed = k8stopo("bench", "--experiment", str(longer), "--out", str(out), "--resume",
                      "--plots", str(plots), timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    final = _rows(out)
    assert final[:len(interrupted)] == interrupted
    run2 = [r for r in final if r["run_id"] == second[0]["run_id"]]
    assert len(final) == len(rows) + len(run2)  # no third run id
    own = controlplane.kind(kind).columns
    identities = [tuple(r[c] for c in ("part", "scenario", "protocol", "metric", "repeat", *own))
                  for r in run2]
    assert len(identities) == len(set(identities)), "a value was written twice"
    assert all(r["command"] == run2[0]["command"] and "--resume" not in r["command"]
               for r in run2)
    parts, count = COMPLETE[kind]
    assert len({r["part"] for r in run2}) == parts
    assert count(run2), sorted(identities)


@pytest.mark.requires_root
def test_a_broken_cluster_is_a_failed_row_and_the_others_are_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: NftablesProxy, node: object, ports: object) -> float:
        raise RunError("nft -f: broken on purpose by the test")
    monkeypatch.setattr(NftablesProxy, "load", broken)
    rules = controlplane.kind("kube-proxy-rules")
    p = rules.params(modes=("nftables", "iptables"), services=(2, 3), connections=10,
                     resyncs=1)
    out = tmp_path / "rows.csv"
    before = run_dirs()
    run_id, failures = controlplane.run(rules, p, "broken", out, Environment.here("test"))
    assert failures == 2 and run_dirs() == before
    rows = _rows(out)
    failed = [r for r in rows if r["metric"] == "failed"]
    assert [(r["proxy_mode"], r["services"]) for r in failed] == [("nftables", "2"),
                                                                   ("nftables", "3")]
    assert all("broken on purpose" in r["error"] and r["value"] == "1" for r in failed)
    measured = {(r["services"], r["metric"]) for r in rows if r["proxy_mode"] == "iptables"}
    assert measured == {(n, m) for n in ("2", "3") for m in
                        ("cluster_build_s", "sync_s", "connect_p50_us", "connect_p99_us")}
    assert all(r["error"] == "" for r in rows if r["proxy_mode"] == "iptables")
    assert {r["run_id"] for r in rows} == {run_id}
