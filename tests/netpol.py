"""The model of Kubernetes' NetworkPolicy e2e suite (test/e2e/network/netpol): namespaces x, y,
z labelled ``ns=<name>``, pods a, b, c labelled ``pod=<name>`` in each, serving ports 80 and
81 over TCP and UDP with container ports named ``serve-<port>-<proto>``; and the cases every
enforcement is held to, each with its expected table written out by hand from the API
reference (never computed by the evaluator under test)."""
from __future__ import annotations

import ipaddress
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from k8stopo.cluster import Cluster
from k8stopo.cni import variant
from k8stopo.node import Pod
from k8stopo.policy import agents_for
from k8stopo.policy.model import parse_all
from k8stopo.policy.semantics import Host, truth_table
from k8stopo.spec import ClusterSpec
from k8stopo.workload import ContainerPort, PodSpec, Workload

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PROBES = ((80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"))
CONTAINER_PORTS = tuple(ContainerPort(p, proto, f"serve-{p}-{proto.lower()}") for p, proto in PROBES)
NS_LABELS = {ns: {"ns": ns} for ns in NAMESPACES}


def pod_names() -> list[tuple[str, str]]:
    return [(ns, pod) for ns in NAMESPACES for pod in PODS]


def fake_hosts() -> list[Host]:
    """The nine pods at made-up addresses 10.<ns>.<pod>.1 (x=1.., a=1..) for pure tests."""
    return [Host(ipaddress.IPv4Address(f"10.{i + 1}.{j + 1}.1"), ns, {"pod": pod},
                 CONTAINER_PORTS, f"{ns}/{pod}")
            for i, ns in enumerate(NAMESPACES) for j, pod in enumerate(PODS)]


def workload(policies: tuple[dict[str, Any], ...] = (), nodes: int = 3) -> Workload:
    """The e2e model as a Workload, pods spread over ``nodes`` nodes (pod names are
    ``<ns>-<pod>`` because this emulation keeps pod names unique cluster-wide)."""
    pods = tuple(PodSpec(f"{ns}-{pod}", ns, {"pod": pod}, f"n{k % nodes + 1}", CONTAINER_PORTS)
                 for k, (ns, pod) in enumerate(pod_names()))
    return Workload(namespaces=dict(NS_LABELS), pods=pods, network_policies=policies)


def netpol(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@dataclass(frozen=True)
class Case:
    """``expect(src, dst, port, protocol)`` with src/dst as ("x", "a") pairs; self-pairs are
    always allowed (the suite's AllowLoopback) and need not be handled."""

    name: str
    policies: Callable[[dict[str, str]], tuple[dict[str, Any], ...]]  # pod "x/a" -> IP
    expect: Callable[[tuple[str, str], tuple[str, str], int, str], bool]
    weave: bool = True  # weave-npc implements it (it rejects named ports, ignores endPort)


SEL_ALL: dict[str, Any] = {}
A = {"matchLabels": {"pod": "a"}}


def _ip32(ips: dict[str, str], pod: str) -> str:
    return f"{ips[pod]}/32"


CASES = (
    Case("deny-all-ingress",
         lambda ips: (netpol("deny-all", "x", {"podSelector": SEL_ALL}),),
         lambda s, d, p, pr: d[0] != "x"),
    Case("allow-same-namespace",
         lambda ips: (netpol("same-ns", "x", {"podSelector": SEL_ALL,
                                              "ingress": [{"from": [{"podSelector": SEL_ALL}]}]}),),
         lambda s, d, p, pr: d[0] != "x" or s[0] == "x"),
    Case("ns-and-pod-selector",  # one peer with both selectors: AND
         lambda ips: (netpol("and", "x", {"podSelector": A, "ingress": [{"from": [
             {"namespaceSelector": {"matchLabels": {"ns": "y"}},
              "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),),
         lambda s, d, p, pr: d != ("x", "a") or s == ("y", "b")),
    Case("ns-or-pod-selector",  # two peers: OR; the podSelector alone is the policy's namespace
         lambda ips: (netpol("or", "x", {"podSelector": A, "ingress": [{"from": [
             {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
             {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),),
         lambda s, d, p, pr: d != ("x", "a") or s[0] == "y" or s == ("x", "b")),
    Case("match-expressions",
         lambda ips: (netpol("exprs", "x", {"podSelector": {"matchExpressions": [
             {"key": "pod", "operator": "In", "values": ["a", "b"]}]}, "ingress": [{"from": [
                 {"namespaceSelector": {"matchExpressions": [
                     {"key": "ns", "operator": "NotIn", "values": ["y"]}]},
                  "podSelector": {"matchExpressions": [
                      {"key": "pod", "operator": "Exists"},
                      {"key": "missing", "operator": "DoesNotExist"}]}}]}]}),),
         lambda s, d, p, pr: d not in (("x", "a"), ("x", "b")) or s[0] != "y"),
    Case("ipblock-except",  # every pod of the cluster but y/b (a /32 of the pool)
         lambda ips: (netpol("ipblock", "x", {"podSelector": A, "ingress": [{"from": [
             {"ipBlock": {"cidr": str(ipaddress.ip_network(ips["x/a"] + "/8", strict=False)),
                          "except": [_ip32(ips, "y/b")]}}]}]}),),
         lambda s, d, p, pr: d != ("x", "a") or s != ("y", "b")),
    Case("named-port",
         lambda ips: (netpol("named", "x", {"podSelector": A, "ingress": [
             {"ports": [{"port": "serve-81-tcp"}]}]}),),
         lambda s, d, p, pr: d != ("x", "a") or (p, pr) == (81, "TCP"), weave=False),
    Case("end-port",
         lambda ips: (netpol("range", "x", {"podSelector": SEL_ALL, "ingress": [
             {"ports": [{"protocol": "UDP", "port": 79, "endPort": 80},
                        {"protocol": "TCP", "port": 81, "endPort": 90}]}]}),),
         lambda s, d, p, pr: d[0] != "x" or (p, pr) in ((80, "UDP"), (81, "TCP")), weave=False),
    Case("port-and-protocol",
         lambda ips: (netpol("udp81", "y", {"podSelector": SEL_ALL, "ingress": [
             {"from": [{"namespaceSelector": SEL_ALL}], "ports": [{"protocol": "UDP", "port": 81}]}]}),),
         lambda s, d, p, pr: d[0] != "y" or (p, pr) == (81, "UDP")),
    Case("egress-deny-all-but-dns",
         lambda ips: (netpol("egress-dns", "x", {"podSelector": SEL_ALL, "policyTypes": ["Egress"],
                                                 "egress": [{"ports": [{"protocol": "UDP", "port": 53},
                                                                       {"protocol": "TCP", "port": 53}]}]}),),
         lambda s, d, p, pr: s[0] != "x"),
    Case("egress-only-policy-types",  # the ingress rules listed are not used: Egress only
         lambda ips: (netpol("egress-only", "x", {
             "podSelector": A, "policyTypes": ["Egress"],
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}],
             "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),),
         lambda s, d, p, pr: s != ("x", "a") or d[0] == "z"),
    Case("egress-named-port-on-destination",  # an egress section: Ingress AND Egress by default
         lambda ips: (netpol("egress-named", "y", {"podSelector": SEL_ALL, "egress": [
             {"to": [{"podSelector": SEL_ALL, "namespaceSelector": SEL_ALL}],
              "ports": [{"protocol": "UDP", "port": "serve-80-udp"}]}]}),),
         lambda s, d, p, pr: (s[0] != "y" or (p, pr) == (80, "UDP")) and d[0] != "y", weave=False),
    Case("ingress-and-egress-union",  # two policies on x/a add up; z/c may only reach x and,
         # its policy having an egress section, is ingress-isolated too (with no rule)
         lambda ips: (netpol("from-b", "x", {"podSelector": A, "ingress": [
             {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": SEL_ALL}]}]}),
             netpol("from-z", "x", {"podSelector": A, "ingress": [
                 {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}],
                  "ports": [{"port": 80}]}]}),
             netpol("c-to-x", "z", {"podSelector": {"matchLabels": {"pod": "c"}}, "egress": [
                 {"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]})),
         lambda s, d, p, pr: ((d != ("x", "a") or s[1] == "b" or (s[0] == "z" and (p, pr) == (80, "TCP")))
                              and (s != ("z", "c") or d[0] == "x") and d != ("z", "c"))),
)


def expected_table(case: Case, port: int, protocol: str) -> dict[tuple[str, str], bool]:
    pods = pod_names()
    return {(f"{s[0]}/{s[1]}", f"{d[0]}/{d[1]}"): s == d or bool(case.expect(s, d, port, protocol))
            for s in pods for d in pods}


def render(table: dict[tuple[str, str], bool]) -> str:
    """The e2e suite's printout: a row per client, a column per server, ``.`` or ``X``."""
    names = [f"{ns}/{pod}" for ns, pod in pod_names()]
    lines = ["-\t" + "\t".join(names)]
    lines += [s + "\t" + "\t".join("." if table[(s, d)] else "X" for d in names) for s in names]
    return "\n".join(lines)


# -- real clusters ----------------------------------------------------------------------------
AGENT = Path(__file__).resolve().parent / "netpol_agent.py"


def e2e_cluster(cni: str, policies: tuple[dict[str, Any], ...] = (), nodes: int = 3) -> Cluster:
    """The workload's pods placed by nodeName, with their declared ports (Cluster does it)."""
    spec = ClusterSpec(cni=cni, nodes=nodes, pods_per_node=0, workload=workload(policies, nodes))
    return Cluster(spec, agents=agents_for(variant(cni)))


def start_servers(cluster: Cluster) -> None:
    """Every pod answers on 80 and 81, TCP and UDP, with its ``ns/pod`` (stopped with the
    cluster: the processes are tracked in the run's manifest)."""
    for pod in cluster.pods:
        p = pod.spawn([sys.executable, str(AGENT), "serve", f"{pod.namespace}/{pod.labels['pod']}",
                       *(f"{port}/{proto}" for port, proto in PROBES)], what=f"netpol@{pod.name}",
                      stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", pod.name


# Fresh UDP source ports, below the kernel's ephemeral range: a test's few thousand tries never
# repeat a 5-tuple that an earlier case left in conntrack (the ESTABLISHED rule would pass it).
_SOURCE_PORTS = itertools.cycle(range(10000, 30000))


def _probe(cluster: Cluster, todo: list[tuple[Pod, Pod, int, str]]) -> dict[tuple, bool]:
    by_client: dict[str, list] = {}
    for src, dst, port, proto in todo:
        by_client.setdefault(src.name, []).append(
            [f"{dst.name}|{port}|{proto}", str(dst.ip), port, proto,
             [next(_SOURCE_PORTS), next(_SOURCE_PORTS)]])

    def one(client: str) -> dict[str, str | None]:
        out = cluster.pod(client).output([sys.executable, str(AGENT), "probe",
                                          json.dumps(by_client[client])])
        return json.loads(out)

    with ThreadPoolExecutor(max_workers=len(by_client) or 1) as pool:
        answers = dict(zip(by_client, pool.map(one, by_client)))
    result = {}
    for src, dst, port, proto in todo:
        got = answers[src.name][f"{dst.name}|{port}|{proto}"]
        assert got in (None, f"{dst.namespace}/{dst.labels['pod']}"), f"{dst.name} answered as {got}"
        result[(src.name, dst.name, port, proto)] = got is not None
    return result


def measure(cluster: Cluster) -> dict[tuple[int, str], dict[tuple[str, str], bool]]:
    """The truth table per port/protocol, from real connections; a blocked probe is tried a
    second time (as the e2e suite retries, by the agent) so a lost datagram does not read as
    a policy."""
    pods = list(cluster.pods)
    todo = [(s, d, port, proto) for s in pods for d in pods if s is not d for port, proto in PROBES]
    seen = _probe(cluster, todo)
    key = {p.name: f"{p.namespace}/{p.labels['pod']}" for p in pods}
    return {(port, proto): {(key[s.name], key[d.name]): s is d or seen[(s.name, d.name, port, proto)]
                            for s in pods for d in pods}
            for port, proto in PROBES}


def evaluate(cluster: Cluster, documents) -> dict[tuple[int, str], dict[tuple[str, str], bool]]:
    """The reference evaluator's tables for the cluster's real pods."""
    policies = parse_all(documents)
    hosts = [Host(p.ip, p.namespace, dict(p.labels), tuple(p.ports),
                  f"{p.namespace}/{p.labels['pod']}") for p in cluster.pods]
    return {(port, proto): truth_table(policies, NS_LABELS, hosts, port, proto)
            for port, proto in PROBES}


def pod_ips(cluster: Cluster) -> dict[str, str]:
    return {f"{p.namespace}/{p.labels['pod']}": str(p.ip) for p in cluster.pods}
