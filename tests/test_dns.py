"""Cluster DNS: kubedns' records, dnsmasq in front of it, pods resolving through 10.96.0.10."""
from __future__ import annotations

import csv
import dataclasses
import ipaddress
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import dns.message
import dns.rcode
import pytest

from k8stopo import experiment, proc
from k8stopo.capture import Capture
from k8stopo.cluster import Cluster
from k8stopo.dns import SERVICE_IP, ClusterDNS
from k8stopo.dns.agent import PACKAGE_ROOT, dnsmasq_conf
from k8stopo.dns.experiment import lookup
from k8stopo.dns.perf import parse_dnsperf
from k8stopo.dns.zone import Zone, records
from k8stopo.measure import MeasurementError
from k8stopo.spec import ClusterSpec, SpecError
from k8stopo.workload import ContainerPort, ServicePort, ServiceSpec, Workload

from conftest import assert_gone, k8stopo

WEB = ServiceSpec(name="web", cluster_ip=ipaddress.IPv4Address("10.96.0.50"),
                  selector={"app": "web"}, ports=(ServicePort(80, 8080, "TCP", "http"),))
HEADLESS = ServiceSpec(name="web-hl", cluster_ip=None, selector={"app": "web"},
                       ports=(ServicePort(80, "http", "TCP", "http"),))


def pod(name: str, ip: str, namespace: str = "default", ready: bool = True,
        labels: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(name=name, namespace=namespace, ip=ipaddress.IPv4Address(ip),
                           ready=ready, labels={"app": "web"} if labels is None else labels,
                           ports=(ContainerPort(8080, "TCP", "http"),))


def ask(zone: Zone, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    r = zone.answer(dns.message.make_query(name, rdtype))
    return dns.rcode.to_text(r.rcode()), sorted(rd.to_text() for rr in r.answer for rd in rr)


# -- kubedns' records, no cluster ---------------------------------------------------------
def test_records_follow_the_dns_specification() -> None:
    pods = [pod("web-0", "10.244.0.5"), pod("web-1", "10.244.1.7"),
            pod("web-2", "10.244.1.8", ready=False), pod("other", "10.244.1.9", labels={})]
    zone = Zone(records([WEB, HEADLESS], pods))
    assert ask(zone, "web.default.svc.cluster.local") == ("NOERROR", ["10.96.0.50"])
    assert ask(zone, "WEB.Default.svc.cluster.local") == ("NOERROR", ["10.96.0.50"])
    assert ask(zone, "_http._tcp.web.default.svc.cluster.local", "SRV") == (
        "NOERROR", ["0 100 80 web.default.svc.cluster.local."])
    # headless: the ready endpoints only; SRV to each endpoint's name at its targetPort
    assert ask(zone, "web-hl.default.svc.cluster.local") == (
        "NOERROR", ["10.244.0.5", "10.244.1.7"])
    assert ask(zone, "_http._tcp.web-hl.default.svc.cluster.local", "SRV") == (
        "NOERROR", ["0 50 8080 10-244-0-5.web-hl.default.svc.cluster.local.",
                    "0 50 8080 10-244-1-7.web-hl.default.svc.cluster.local."])
    assert ask(zone, "10-244-1-7.web-hl.default.svc.cluster.local") == ("NOERROR", ["10.244.1.7"])
    assert ask(zone, "10-244-1-9.any.pod.cluster.local") == ("NOERROR", ["10.244.1.9"])
    assert ask(zone, "50.0.96.10.in-addr.arpa", "PTR") == (
        "NOERROR", ["web.default.svc.cluster.local."])
    # NODATA for names that exist, NXDOMAIN for the rest, REFUSED outside the zones
    assert ask(zone, "web.default.svc.cluster.local", "AAAA") == ("NOERROR", [])
    assert ask(zone, "default.svc.cluster.local") == ("NOERROR", [])
    assert ask(zone, "nope.default.svc.cluster.local") == ("NXDOMAIN", [])
    assert ask(zone, "web.other.svc.cluster.local") == ("NXDOMAIN", [])
    assert ask(zone, "not-an-ip.any.pod.cluster.local") == ("NXDOMAIN", [])
    assert ask(zone, "example.com") == ("REFUSED", [])


def test_a_readiness_change_changes_the_headless_answer() -> None:
    pods = [pod("web-0", "10.244.0.5"), pod("web-1", "10.244.1.7")]
    before = ask(Zone(records([HEADLESS], pods)), "web-hl.default.svc.cluster.local")[1]
    pods[1].ready = False
    after = ask(Zone(records([HEADLESS], pods)), "web-hl.default.svc.cluster.local")[1]
    assert (before, after) == (["10.244.0.5", "10.244.1.7"], ["10.244.0.5"])


def test_dnsmasq_config_passes_its_parser_and_a_broken_one_does_not(tmp_path: Path) -> None:
    good = tmp_path / "good.conf"
    good.write_text(dnsmasq_conf())
    proc.run(["dnsmasq", "--test", f"--conf-file={good}"])
    assert "no-resolv" in good.read_text().splitlines()
    bad = tmp_path / "bad.conf"
    bad.write_text(dnsmasq_conf().replace("cache-size=1000", "cache-size=lots"))
    with pytest.raises(proc.CommandError):
        proc.run(["dnsmasq", "--test", f"--conf-file={bad}"])


# -- on a cluster ---------------------------------------------------------------------------
class WebCluster(Cluster):
    """Two web pods (one per node) and a client, as a manifest would place them."""

    def pod_plan(self):
        n1, n2 = self.nodes
        return [(n1, "web-0", "default", {"app": "web"}), (n2, "web-1", "default", {"app": "web"}),
                (n1, "client", "default", {})]


QUERY = """import json, sys, dns.message, dns.query, dns.rcode
r = dns.query.udp(dns.message.make_query(sys.argv[1], sys.argv[2]), sys.argv[3], timeout=3,
                  port=int(sys.argv[4]))
print(json.dumps([dns.rcode.to_text(r.rcode()),
                  sorted(rd.to_text() for rr in r.answer for rd in rr)]))"""


def query(endpoint, name: str, rdtype: str = "A", server: str = str(SERVICE_IP),
          port: int = 53) -> tuple[str, list[str]]:
    out = endpoint.output([sys.executable, "-c", QUERY, name, rdtype, server, str(port)],
                          env={"PYTHONPATH": str(PACKAGE_ROOT)})
    rcode, answer = json.loads(out)
    return rcode, answer


@pytest.fixture(scope="module", params=["flannel-vxlan", "calico-bgp"])
def cluster(request):
    # the pods declare no ports here: the headless Service targets a number
    headless = dataclasses.replace(HEADLESS, ports=(ServicePort(80, 8080, "TCP", "http"),))
    spec = ClusterSpec(cni=request.param, nodes=2, pods_per_node=0,
                       workload=Workload(services=(WEB, headless)))
    before = Path("/etc/resolv.conf").read_text()
    with WebCluster(spec, agents=[ClusterDNS]) as c:
        prefix, pids = c.state.prefix, c.state.data["pids"]
        yield c
        pids = list(pids)
    assert_gone(prefix, pids)
    assert Path("/etc/resolv.conf").read_text() == before  # the host's file never changed


@pytest.mark.requires_root
def test_every_record_type_through_dnsmasq(cluster: Cluster) -> None:
    client = cluster.pod("client")
    web = sorted(str(cluster.pod(n).ip) for n in ("web-0", "web-1"))
    assert query(client, "web.default.svc.cluster.local") == ("NOERROR", ["10.96.0.50"])
    assert query(client, "web-hl.default.svc.cluster.local") == ("NOERROR", web)
    assert query(client, "_http._tcp.web.default.svc.cluster.local", "SRV") == (
        "NOERROR", ["0 100 80 web.default.svc.cluster.local."])
    assert query(client, "_http._tcp.web-hl.default.svc.cluster.local", "SRV") == (
        "NOERROR", [f"0 50 8080 {ip.replace('.', '-')}.web-hl.default.svc.cluster.local."
                    for ip in web])
    dashed = web[0].replace(".", "-")
    assert query(client, f"{dashed}.default.pod.cluster.local") == ("NOERROR", [web[0]])
    assert query(client, "missing.default.svc.cluster.local")[0] == "NXDOMAIN"
    # the Service address is not the server's own: kubedns sits behind dnsmasq in its pod
    dns_pod = cluster.pod("kube-dns")
    assert dns_pod.namespace == "kube-system" and dns_pod.labels == {"k8s-app": "kube-dns"}
    assert query(dns_pod, "web.default.svc.cluster.local", server="127.0.0.1",
                 port=10053) == ("NOERROR", ["10.96.0.50"])


@pytest.mark.requires_root
def test_getent_in_a_pod_resolves_a_short_service_name(cluster: Cluster) -> None:
    client = cluster.pod("client")
    assert client.output(["cat", "/etc/resolv.conf"]).splitlines() == [
        "nameserver 10.96.0.10", "search default.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5"]
    assert client.output(["getent", "hosts", "web"]).split() == [
        "10.96.0.50", "web.default.svc.cluster.local"]
    # the node keeps the host's resolver (CNI plugins and node daemons are not pods)
    assert "10.96.0.10" not in cluster.nodes[0].output(["cat", "/etc/resolv.conf"])


@pytest.mark.requires_root
def test_dnsmasq_never_forwards_outside_the_run(cluster: Cluster) -> None:
    client, dns_pod = cluster.pod("client"), cluster.pod("kube-dns")
    inside = [cluster.pod_cidr, cluster.underlay.cidr, ipaddress.IPv4Network(f"{SERVICE_IP}/32")]
    pcap = cluster.state.path("dns", "no-forward.pcap")
    with Capture(dns_pod.node, dns_pod.node.intf, pcap, ["port", "53"]) as wire, \
            Capture(dns_pod, "eth0", pcap.with_suffix(".pod.pcap"), ["port", "53"]) as eth0:
        assert query(client, "example.com")[0] in ("REFUSED", "NXDOMAIN", "SERVFAIL")
        assert query(dns_pod, "example.com", server="127.0.0.1")[0] in (
            "REFUSED", "NXDOMAIN", "SERVFAIL")
    assert any(ipaddress.IPv4Address(p.dst) == dns_pod.ip for p in eth0.packets)  # it did see it
    outside = [p for p in wire.packets + eth0.packets for a in (p.src, p.dst)
               if not any(ipaddress.IPv4Address(a) in n for n in inside)]
    assert outside == []


def kubedns_answers(cluster: Cluster, name: str, want: int) -> list[str]:
    """kubedns' answer once it has ``want`` addresses (it reloads on SIGHUP, asynchronously),
    or the last one after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        answer = query(cluster.pod("kube-dns"), name, server="127.0.0.1", port=10053)[1]
        if len(answer) == want or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


@pytest.mark.requires_root
def test_records_follow_readiness_while_running(cluster: Cluster) -> None:
    agent = next(a for a in cluster.agents if isinstance(a, ClusterDNS))
    name = "web-hl.default.svc.cluster.local"
    cluster.pod("web-1").ready = False
    try:
        agent.refresh()
        assert kubedns_answers(cluster, name, 1) == [str(cluster.pod("web-0").ip)]
    finally:
        cluster.pod("web-1").ready = True
        agent.refresh()
    assert len(kubedns_answers(cluster, name, 2)) == 2


# -- dnsperf: bench's dns protocol ------------------------------------------------------------
def test_dnsperf_parser_refuses_output_it_cannot_use() -> None:
    summary = "  Queries completed:    0 (0.00%)\n  Queries per second:   0.0\n"
    with pytest.raises(MeasurementError, match="no query completed"):
        parse_dnsperf(summary)
    no_per_query = ("  Queries completed:    10 (100.00%)\n  Queries per second:   99.5\n"
                    "  Average Latency (s):  0.000100 (min 0.000050, max 0.000300)\n")
    with pytest.raises(MeasurementError, match="per-query"):
        parse_dnsperf(no_per_query)
    with_lines = no_per_query + "".join(f"> NOERROR a.b.c A 0.{i:06d}\n" for i in range(1, 101))
    assert [(s.metric, round(s.value, 3)) for s in parse_dnsperf(with_lines)] == [
        ("queries_per_s", 99.5), ("latency_avg_ms", 0.1), ("latency_p99_ms", 0.099)]


@pytest.mark.requires_root
def test_bench_pod_to_dns_measures_dnsperf_against_the_service(tmp_path: Path) -> None:
    out = tmp_path / "dns.csv"
    res = k8stopo("bench", "--cni", "flannel-host-gw", "--scenarios", "pod-to-dns",
                  "--protocols", "dns", "--nodes", "2", "--pods-per-node", "1",
                  "--duration", "1", "--repeat", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["metric"] for r in rows) == ["cpu_busy_pct", "latency_avg_ms",
                                                 "latency_p99_ms", "queries_per_s"]
    assert {(r["scenario"], r["protocol"], r["server"], r["server_ip"]) for r in rows} == {
        ("pod-to-dns", "dns", "kube-system/kube-dns", "10.96.0.10")}
    assert all(float(r["value"]) > 0 for r in rows)
    raw = (out.parent / rows[0]["raw_file"]).read_text()
    assert "Queries per second" in raw and "kube-dns.kube-system.svc.cluster.local A" in raw


@pytest.mark.requires_root
def test_bench_refuses_dns_without_its_scenario() -> None:
    res = k8stopo("bench", "--cni", "flannel-host-gw", "--scenarios", "pod-to-pod-cross-node",
                  "--protocols", "dns", "--out", "/nonexistent/x.csv")
    assert res.returncode == 2 and "go together" in res.stderr


@pytest.mark.requires_root
def test_ndots_search_expansion_costs_queries_a_trailing_dot_saves(cluster: Cluster) -> None:
    agent = next(a for a in cluster.agents if isinstance(a, ClusterDNS))
    seen = {}
    for name in ("web", "web.default", "web.default.svc.cluster.local",
                 "web.default.svc.cluster.local."):
        agent.clear_cache()
        before = agent.queries_answered("A")
        assert lookup(cluster.nodes[0].pods[0], name, 1)["address"] == "10.96.0.50"
        seen[name] = agent.queries_answered("A") - before
    # search list: default.svc.cluster.local, svc.cluster.local, cluster.local; ndots:5
    assert seen == {"web": 1, "web.default": 2, "web.default.svc.cluster.local": 4,
                    "web.default.svc.cluster.local.": 1}


def test_experiment_file_refuses_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    bad = tmp_path / "dns.yaml"
    bad.write_text("kind: dns\ncni: flannel-vxlan\nservice: 10\n")
    with pytest.raises(SpecError, match=r"dns.yaml: unknown key 'service' for kind dns"):
        experiment.load(bad)
    bad.write_text("kind: dns\nduration: 60\n")
    with pytest.raises(SpecError, match="30 s TTL"):
        experiment.load(bad)
    shipped = Path(__file__).parent.parent / "experiments" / "control-plane" / "dns.yaml"
    loaded = experiment.load(shipped)
    assert loaded["kind"] == "dns" and loaded["params"].services == 2000


@pytest.mark.requires_root
def test_health_endpoints_answer_and_fail_when_their_server_stops(cluster: Cluster) -> None:
    agent = next(a for a in cluster.agents if isinstance(a, ClusterDNS))
    assert agent.health("/readiness", 8081)[0] == 200
    assert agent.health("/healthcheck/kubedns", 10054)[0] == 200
    status, body = agent.health("/healthcheck/dnsmasq", 10054)
    assert status == 200 and "10.96.0.10" in body
    assert agent.queries_answered("A") > 0
    assert agent.health("/nothing", 10054)[0] == 404
    # a cache that stopped answering fails its health check (the last test on the cluster: dnsmasq is gone)
    agent.named["dnsmasq"].stop()
    assert agent.health("/healthcheck/dnsmasq", 10054)[0] == 503
    assert agent.health("/healthcheck/kubedns", 10054)[0] == 200
