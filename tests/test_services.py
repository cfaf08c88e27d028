"""Services through kube-proxy's three modes, on a real cluster (flannel-vxlan, 3 nodes).

The client pod is on n1; the Deployment's three replicas are spread over the nodes
in order, but placed with ``nodeName`` nowhere, so n1 holds web-0 and the others
are on n2, n3. Statistical tests use fixed numbers of attempts and thresholds whose
false-alarm probability is below 1e-6.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from k8stopo import manifests, probe
from k8stopo.cluster import Cluster
from k8stopo.cni import VARIANTS
from k8stopo.kubeproxy import MODES, proxy_class
from k8stopo.kubeproxy.model import ServicePortInfo, service_ports
from k8stopo.node import Node
from k8stopo.servers import PodServers
from k8stopo.spec import ClusterSpec

from conftest import k8stopo

pytestmark = pytest.mark.requires_root  # clusters, or commands that need root

DATA = Path(__file__).parent / "data"
CHI2_DF2_P1E6 = 27.631  # chi-square, 2 degrees of freedom: P(X > 27.631) = 1e-6


@pytest.fixture(scope="module", params=list(MODES))
def cluster(request: pytest.FixtureRequest):
    spec = ClusterSpec(cni="flannel-vxlan", nodes=3, pods_per_node=0,
                       workload=manifests.load(DATA / "services.yaml"))
    with Cluster(spec, agents=[PodServers, proxy_class(request.param)]) as c:
        yield c


def mode(cluster: Cluster) -> str:
    return cluster.agents[-1].mode  # type: ignore[attr-defined]


def svc(cluster: Cluster, name: str, protocol: str = "tcp") -> ServicePortInfo:
    return next(s for s in service_ports(cluster.spec.workload, cluster.pods)
                if s.service == name and s.protocol == protocol)


def connect(cluster: Cluster, via: str, port: int, count: int, protocol: str = "tcp",
            client: str = "client.default") -> list[probe.Result]:
    t = probe.Target("x", via, port, protocol)
    return probe.probe(cluster, [t], count, clients=[cluster.pod(client)])


def node_addresses(node: Node) -> set[str]:
    out = json.loads(node.output(["ip", "-j", "-4", "addr", "show"]))
    return {a["local"] for link in out for a in link.get("addr_info", [])}


def test_rules_carry_kube_proxys_names(cluster: Cluster) -> None:
    s = svc(cluster, "web")
    node = cluster.node("n1")
    if mode(cluster) == "nftables":
        table = node.output(["nft", "list", "table", "ip", "kube-proxy"])
        assert f"{s.cluster_ip} . tcp . 80 : goto service-{s.nft_base}" in table
        assert "numgen random mod 3 vmap" in table
    else:
        saved = node.output(["iptables-save", "-t", "nat"])
        chain = s.svc_chain if mode(cluster) == "iptables" else "KUBE-PORTALS-CONTAINER"
        assert f"-d {s.cluster_ip}/32" in saved and chain in saved
        if mode(cluster) == "iptables":
            assert "--probability 0.33333333349" in saved
            assert all(s.sep_chain(ep) in saved for ep in s.endpoints)


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_backend_choice_is_uniform(cluster: Cluster, protocol: str) -> None:
    if mode(cluster) == "userspace":
        pytest.skip("userspace mode is round-robin, not random")
    s = svc(cluster, "web", protocol)
    n = 300
    seen = Counter(r.answered_by for r in connect(cluster, str(s.cluster_ip), 80, n, protocol))
    assert set(seen) == {"default/web-0", "default/web-1", "default/web-2"}, seen
    chi2 = sum((seen[k] - n / 3) ** 2 / (n / 3) for k in seen)
    assert chi2 < CHI2_DF2_P1E6, seen


def test_userspace_is_round_robin(cluster: Cluster) -> None:
    if mode(cluster) != "userspace":
        pytest.skip("only userspace mode is round-robin")
    seen = [r.answered_by for r in connect(cluster, str(svc(cluster, "web").cluster_ip), 80, 6)]
    assert seen[:3] == seen[3:] and len(set(seen)) == 3, seen


def test_client_ip_affinity_sticks(cluster: Cluster) -> None:
    results = connect(cluster, str(svc(cluster, "sticky").cluster_ip), 80, 30)
    assert all(r.connected for r in results)
    assert len({r.answered_by for r in results}) == 1, Counter(r.answered_by for r in results)


def test_nodeport_answers_on_every_node(cluster: Cluster) -> None:
    for node in cluster.nodes:
        results = connect(cluster, str(node.ip), 30080, 3)
        assert all(r.connected for r in results), (node.name, results)


def test_pod_to_cluster_ip_keeps_the_pods_ip(cluster: Cluster) -> None:
    client = cluster.pod("client.default")
    results = connect(cluster, str(svc(cluster, "web").cluster_ip), 80, 12)
    assert all(r.connected for r in results)
    remote = [r for r in results if r.answered_by != "default/web-0"]  # web-0 is on n1
    assert remote
    if mode(cluster) == "userspace":  # the proxier's own connection, from the node
        assert {r.peer for r in remote} <= node_addresses(cluster.node("n1"))
    else:
        assert {r.peer for r in remote} == {str(client.ip)}


def test_nodeport_from_outside_the_pod_network_is_masqueraded(cluster: Cluster) -> None:
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    t = probe.Target("x", str(n2.ip), 30080, "tcp")
    results = probe.probe_from(cluster, n1, [t], count=6)
    assert all(r.connected for r in results)
    assert {r.peer for r in results} <= node_addresses(n2), results


def test_a_backend_reaches_itself_through_its_service(cluster: Cluster) -> None:
    """Hairpin: KUBE-SEP's ``-s <endpoint> -j KUBE-MARK-MASQ`` makes the reply come back
    through the node (the bridge plugin's hairpin mode lets it out of the same port)."""
    results = connect(cluster, str(svc(cluster, "web").cluster_ip), 80, 40, client="web-0.default")
    assert all(r.connected for r in results), [r for r in results if not r.connected]
    assert "default/web-0" in {r.answered_by for r in results}  # (2/3)^40 < 1e-7 to miss


def test_service_without_endpoints_refuses(cluster: Cluster) -> None:
    results = connect(cluster, str(svc(cluster, "empty").cluster_ip), 80, 3)
    assert {r.error for r in results} == {"refused"}, results
    assert all(r.connect_us < 500_000 for r in results)


def test_not_ready_pod_leaves_the_endpoints(cluster: Cluster) -> None:
    web0 = cluster.pod("web-0.default")
    ip = str(svc(cluster, "web").cluster_ip)
    cluster.set_ready(web0, False)
    try:
        assert all(ep.pod != web0.name for ep in svc(cluster, "web").endpoints)
        seen = Counter(r.answered_by for r in connect(cluster, ip, 80, 60))
        assert "default/web-0" not in seen and sum(seen.values()) == 60, seen
    finally:
        cluster.set_ready(web0, True)
    seen = Counter(r.answered_by for r in connect(cluster, ip, 80, 60))
    assert "default/web-0" in seen, seen  # (2/3)^60 < 1e-10 to miss it by chance


def test_a_backend_that_stops_answering(cluster: Cluster) -> None:
    """kube-proxy's iptables and nftables modes pick once and never retry; the userspace
    proxier tries the next endpoint when one refuses."""
    servers = next(a for a in cluster.agents if isinstance(a, PodServers))
    web1 = cluster.pod("web-1.default")
    servers.stop_server(web1)
    try:
        results = connect(cluster, str(svc(cluster, "web").cluster_ip), 80, 60)
    finally:
        servers.start(web1)
    failed = sum(not r.connected for r in results)
    if mode(cluster) == "userspace":
        assert failed == 0
        assert "default/web-1" not in {r.answered_by for r in results}
    else:
        assert failed > 0  # (2/3)^60 < 1e-10 to see none by chance


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("cni", list(VARIANTS))
def test_every_variant_and_mode_serves_cluster_ips_and_node_ports(cni: str, mode: str) -> None:
    if not VARIANTS[cni].kube_proxy_reaches_pods():  # bench leaves its Service scenarios out
        pytest.skip(f"{cni}: kube-proxy cannot forward to its pods by design")
    spec = ClusterSpec(cni=cni, nodes=3, pods_per_node=0,
                       workload=manifests.load(DATA / "services.yaml"))
    with Cluster(spec, agents=[PodServers, proxy_class(mode)]) as c:
        wanted = [probe.Target("web", str(svc(c, "web").cluster_ip), 80, "tcp"),
                  probe.Target("web", str(svc(c, "web", "udp").cluster_ip), 80, "udp"),
                  *(probe.Target("web-np", str(n.ip), 30080, "tcp") for n in c.nodes)]
        results = probe.probe(c, wanted, 3, clients=[c.pod("client.default")])
    assert all(r.connected for r in results), [r for r in results if not r.connected]


def test_bench_measures_through_a_service(tmp_path: Path) -> None:
    out = tmp_path / "b.csv"
    res = k8stopo("bench", "--cni", "flannel-vxlan", "--scenarios", "pod-to-service,pod-to-nodeport",
                  "--protocols", "tcp,icmp", "--nodes", "2", "--duration", "1", "--repeat", "1",
                  "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    got = {(r["scenario"], r["protocol"]) for r in rows if r["metric"] == "throughput_bps"}
    assert got == {("pod-to-service", "tcp"), ("pod-to-nodeport", "tcp")}
    assert {r["server"] for r in rows} == {"k8stopo-iperf3-server.default"}


def test_probe_prints_netpol_e2e_truth_tables_and_json() -> None:
    xyz = str(Path(__file__).parent.parent / "experiments" / "manifests" / "netpol-xyz.yaml")
    res = k8stopo("probe", "--cni", "calico-bgp", "--nodes", "3", "--manifests", xyz,
                  "--ports", "80", "--protocols", "tcp,udp")
    assert res.returncode == 0, res.stderr
    tables = res.stdout.split("\n\n")
    # a NodePort is dialled at its own port: its table is that port's
    assert [t.splitlines()[0] for t in tables] == ["tcp/80:", "tcp/30000:", "udp/80:"]
    header, *rows = tables[0].splitlines()[1:]
    pods = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]
    assert header.split() == ["-", *pods, "svc:x/s-a"]
    assert [r.split()[0] for r in rows] == pods
    assert all(r.split()[1:] == ["."] * 10 for r in rows), tables[0]  # calico: no policy given
    res = k8stopo("probe", "--cni", "flannel-vxlan", "--nodes", "2", "--manifests", xyz,
                  "--ports", "81", "--protocols", "udp", "--json", "--count", "2")
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 9 * (9 + 1 + 2) * 2  # 9 clients: 9 pods, the ClusterIP, 2 NodePorts
    assert set(lines[0]) == {"from", "to", "via", "port", "protocol", "connected",
                             "answered_by", "error"}
    svc = [l for l in lines if l["to"] == "svc:x/s-a"]
    assert {l["answered_by"] for l in svc} == {"x/a"} and {l["error"] for l in svc} == {None}
