"""experiments/manifests/greengrocer: an application's release manifests (seven tiers, a
LoadBalancer front end, a StatefulSet store with a sidecar, a DaemonSet agent in another
namespace, a deny-all plus one allow-list per service) load unchanged, and every probe of a
real cluster equals the truth table written here from the Kubernetes API's semantics.

The table is written by hand from the application's architecture, as the policies state it
(who calls whom on which port), never computed by the enforcement code; a rootless test
holds the reference evaluator (k8stopo.policy.semantics) to it as a second opinion."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from k8stopo import manifests
from k8stopo.policy.model import parse_all
from k8stopo.policy.semantics import Host, allowed
from k8stopo.workload import PodSpec, ServiceSpec, Workload

from conftest import k8stopo

APP = Path(__file__).resolve().parent.parent / "experiments" / "manifests" / "greengrocer"
NODES = 3
SHOP, MONITORING = "greengrocer", "monitoring"
PORTS = (80, 6379, 8080, 9090, 9100)  # 80: the LoadBalancer Service's port; no pod serves it
SERVES = {"frontend": {8080, 9090}, "api": {8080, 9090}, "catalog": {8080, 9090},
          "cart": {8080, 9090}, "checkout": {8080, 9090}, "payments": {8080, 9090},
          "store": {6379, 9090}, "node-agent": {9100}}
# who calls whom inside the shop, on which port: the allow-lists of 95-network-policies.yaml
CALLS = {("frontend", "api", 8080),
         ("api", "catalog", 8080), ("api", "cart", 8080), ("api", "checkout", 8080),
         ("checkout", "cart", 8080), ("checkout", "catalog", 8080),
         ("checkout", "payments", 8080),
         ("catalog", "store", 6379), ("cart", "store", 6379), ("store", "store", 6379)}

Tier = tuple[str, str]  # (namespace, app label)


def egress_ok(src: Tier, dst: Tier | None, port: int) -> bool:
    """The source's egress: the shop's pods are isolated (default-deny-all) and may reach
    only what CALLS lists (and DNS); the monitoring namespace has no policy. ``dst`` None
    is an address that is no pod (a node)."""
    if src[0] != SHOP:
        return True
    return dst is not None and dst[0] == SHOP and (src[1], dst[1], port) in CALLS


def ingress_ok(src: Tier | None, dst: Tier, port: int) -> bool:
    """The destination's ingress: a shop pod admits CALLS, its metrics port from the
    monitoring namespace, and the front end's http port from anyone (pod or not)."""
    if dst[0] != SHOP:
        return True
    if dst[1] == "frontend" and port == 8080:
        return True
    if src is None:
        return False
    return ((port == 9090 and src[0] == MONITORING)
            or (src[0] == SHOP and (src[1], dst[1], port) in CALLS))


def pod_to_pod(src: Tier, dst: Tier, port: int, same_pod: bool) -> bool:
    """A pod's own IP stays inside the pod (netpol e2e's AllowLoopback)."""
    served = port in SERVES[dst[1]]
    return served and (same_pod or (egress_ok(src, dst, port) and ingress_ok(src, dst, port)))


def via_cluster_ip(src: Tier, backend: Tier, target: int) -> bool:
    """kube-proxy DNATs to a backend before the filter chains: the policies see the backend
    and its target port, from the client pod."""
    return port_served(backend, target) and egress_ok(src, backend, target) \
        and ingress_ok(src, backend, target)


def via_node_port(src: Tier, backend: Tier, target: int, node_port: int) -> bool:
    """A NodePort is rewritten twice (DNAT, and SNAT to a node's IP), and the API leaves
    whether policies see a packet before or after that undefined. The application is
    written so both readings agree (the test checks it): the front end admits anyone, and a
    shop pod may reach neither the front end nor a node."""
    before = egress_ok(src, None, node_port) and ingress_ok(None, backend, target)
    after = egress_ok(src, backend, target) and ingress_ok(src, backend, target) \
        and ingress_ok(None, backend, target)
    assert before == after, (src, backend)
    return port_served(backend, target) and after


def port_served(tier: Tier, port: int) -> bool:
    return port in SERVES[tier[1]]


def tier(pod: PodSpec) -> Tier:
    return pod.namespace, pod.labels["app"]


def load() -> Workload:
    return manifests.load(APP, nodes=NODES)


# -- rootless -----------------------------------------------------------------------

def test_the_application_loads_unchanged_with_its_split() -> None:
    w = load()
    assert [p.name for p in w.pods] == [
        "frontend-0", "frontend-1", "api-0", "catalog-0", "catalog-1", "cart-0", "checkout-0",
        "payments-0", "store-0", "store-1", "node-agent-n1", "node-agent-n2", "node-agent-n3"]
    pods = {p.name: p for p in w.pods}
    store = pods["store-1"]
    assert (store.hostname, store.subdomain, store.owner) == ("store-1", "store",
                                                              "StatefulSet/store")
    assert [(p.name, p.container_port) for p in store.ports] == [("redis", 6379),
                                                                  ("metrics", 9090)]  # sidecar
    assert store.readiness is not None and store.readiness.kind == "exec"
    assert pods["node-agent-n3"].node_name == "n3"
    probes = {p.name: p.readiness for p in w.pods}
    assert probes["catalog-0"].kind == "grpc" and probes["cart-0"].port == 8080  # type: ignore[union-attr]
    assert probes["frontend-0"].path == "/healthz" and probes["frontend-0"].period_s == 5  # type: ignore[union-attr]
    front = w.services[0]
    assert (front.name, front.type, front.ports[0].node_port) == ("frontend", "LoadBalancer", 30000)
    assert [s.name for s in w.services if s.cluster_ip is None] == ["store"]
    assert len(w.network_policies) == 10
    kinds = sorted(e.split(" ")[0] for e in w.ignored if e.count(" ") == 1)
    assert kinds.count("ServiceAccount") == 8 and kinds.count("ConfigMap") == 2
    assert {"Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler", "PriorityClass",
            "ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    fields = {e.split(" ", 2)[2] for e in w.ignored if e.count(" ") > 1}
    for field in ("env", "envFrom", "resources", "securityContext", "livenessProbe",
                  "startupProbe", "volumeMounts", "lifecycle", "imagePullPolicy"):
        assert f"spec.template.spec.containers[].{field}" in fields, field
    for field in ("serviceAccountName", "volumes", "affinity", "nodeSelector", "tolerations",
                  "securityContext.runAsUser", "terminationGracePeriodSeconds", "priorityClassName",
                  "initContainers[].command"):
        assert f"spec.template.spec.{field}" in fields, field
    assert "spec.volumeClaimTemplates" in fields and "spec.strategy" in fields
    with pytest.raises(manifests.SpecError, match="--strict refuses it"):
        manifests.load(APP, nodes=NODES, strict=True)


def _hosts(w: Workload) -> list[Host]:
    return [Host(ipaddress.IPv4Address(f"10.244.{i // 200}.{i % 200 + 2}"), p.namespace,
                 p.labels, p.ports, p.name) for i, p in enumerate(w.pods)]


def test_the_reference_evaluator_agrees_with_the_hand_written_table() -> None:
    w = load()
    policies = parse_all(w.network_policies)
    hosts = _hosts(w)
    pods = {p.name: p for p in w.pods}
    for s in hosts:
        for d in hosts:
            for port in PORTS:
                want = egress_ok(tier(pods[s.name]), tier(pods[d.name]), port) \
                    and ingress_ok(tier(pods[s.name]), tier(pods[d.name]), port)
                got = allowed(policies, w.namespaces, s, d, port, "TCP")
                assert got == want, (s.name, d.name, port)
    node = Host(ipaddress.IPv4Address("192.168.0.11"))  # not a pod: only ipBlocks match it
    for d in hosts:
        for port in PORTS:
            want = ingress_ok(None, tier(pods[d.name]), port)
            assert allowed(policies, w.namespaces, node, d, port, "TCP") == want, (d.name, port)


def expected(w: Workload, line: dict[str, object], node_ips: set[str]) -> bool:
    """One probe's expected outcome (``k8stopo probe --json`` line)."""
    pods = {f"{p.namespace}/{p.name}": p for p in w.pods}
    src = pods[str(line["from"])]
    port = int(line["port"])  # type: ignore[call-overload]
    to = str(line["to"])
    if not to.startswith("svc:"):
        dst = pods[to]
        return pod_to_pod(tier(src), tier(dst), port, src is dst)
    ns, name = to[len("svc:"):].split("/")
    svc: ServiceSpec = next(s for s in w.services if (s.namespace, s.name) == (ns, name))
    sport = next(p for p in svc.ports if port in (p.port, p.node_port))
    backends = [p for p in w.pods if p.namespace == ns
                and all(p.labels.get(k) == v for k, v in svc.selector.items())]
    target = sport.target_port
    outcomes = set()
    for b in backends:
        number = target if isinstance(target, int) else next(
            c.container_port for c in b.ports if c.name == target)
        if line["via"] in node_ips:
            outcomes.add(via_node_port(tier(src), tier(b), number, port))
        else:
            outcomes.add(via_cluster_ip(tier(src), tier(b), number))
    assert len(outcomes) == 1, f"{to}: its backends differ, so one probe cannot be expected"
    return outcomes.pop()


def test_no_backend_reaches_its_own_service() -> None:
    """A backend probing its own Service may be sent to itself (hairpin, masqueraded: the
    API leaves policy on rewritten traffic undefined). Each backend's own egress policy
    already refuses that, after the DNAT and before any SNAT, so no cell depends on it."""
    w = load()
    for svc in w.services:
        for b in (p for p in w.pods if p.namespace == svc.namespace and all(
                p.labels.get(k) == v for k, v in svc.selector.items())):
            for sp in svc.ports:
                if svc.cluster_ip is not None:
                    number = sp.target_port if isinstance(sp.target_port, int) else next(
                        c.container_port for c in b.ports if c.name == sp.target_port)
                    assert not egress_ok(tier(b), tier(b), number), (svc.name, b.name)


# -- a real cluster -----------------------------------------------------------------

@pytest.mark.requires_root
def test_every_probe_on_calico_bgp_equals_the_table() -> None:
    """Needs: root, calico-bgp. Every pod is Ready (its readinessProbe targets a served
    port, or is exec), so the table holds once the cluster is up."""
    res = k8stopo("probe", "--cni", "calico-bgp", "--nodes", str(NODES), "--manifests",
                  str(APP), "--ports", ",".join(map(str, PORTS)), "--json", timeout=1200)
    assert res.returncode == 0, res.stderr
    assert "accepted" in res.stderr and "that do not change the network" in res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    w = load()
    node_ips = {str(ipaddress.IPv4Address(line["via"])) for line in lines
                if str(line["to"]).startswith("svc:") and int(line["port"]) == 30000}
    services = sum(1 for s in w.services if s.cluster_ip is not None)
    assert len(lines) == 13 * (13 * len(PORTS) + services + NODES)
    wrong = [f"{l['from']} -> {l['to']} via {l['via']}:{l['port']}: measured "
             f"{'connected' if l['connected'] else l['error']}"
             for l in lines if l["connected"] != expected(w, l, node_ips)]
    assert not wrong, "\n".join(wrong)
    connected = [l for l in lines if l["connected"]]
    assert {l["answered_by"] for l in connected if l["to"] == "svc:greengrocer/frontend"} \
        <= {"greengrocer/frontend-0", "greengrocer/frontend-1"}
