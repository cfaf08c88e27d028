"""A small application as real manifests would describe it, built by hand as the Workload
the manifest reader produces (:mod:`k8stopo.workload` is plain data): a LoadBalancer front
end with an httpGet readiness probe, a cart tier behind a ClusterIP with a grpc probe, a
StatefulSet store behind its headless Service with tcpSocket probes, a pod whose probe
names a port it does not serve (so it never joins the cart Service), a load generator,
and a deny-all policy with one allow-list per tier."""
from __future__ import annotations

import ipaddress
from typing import Any

from k8stopo.workload import ContainerPort, PodSpec, Probe, ServicePort, ServiceSpec, Workload

NS = "shop"
FRONTEND_IP = ipaddress.IPv4Address("10.96.10.1")
CART_IP = ipaddress.IPv4Address("10.96.10.2")
HTTP = ContainerPort(8080, "TCP", "http")
GRPC = ContainerPort(7070, "TCP", "grpc")
REDIS = ContainerPort(6379, "TCP", "redis")


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def _allow(app: str, source: str | None, port: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"port": port, "protocol": "TCP"}]}
    if source:
        rule["from"] = [{"podSelector": {"matchLabels": {"app": source}}}]
    return _policy(f"allow-{app}", {"podSelector": {"matchLabels": {"app": app}},
                                    "policyTypes": ["Ingress"], "ingress": [rule]})


POLICIES = (
    _policy("deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]}),
    _allow("frontend", None, 8080),
    _allow("cart", "frontend", 7070),
    _allow("store", "cart", 6379),
)


def shop(policies: bool = True, lb_policy: str = "Cluster") -> Workload:
    """The application; nodes are given so that placement does not depend on order."""
    web = Probe("httpGet", "http", "/healthz", initial_delay_s=2, period_s=1)
    pods = (
        PodSpec("frontend-0", NS, {"app": "frontend"}, "n1", (HTTP,), readiness=web,
                owner="Deployment/frontend"),
        PodSpec("frontend-1", NS, {"app": "frontend"}, "n2", (HTTP,), readiness=web,
                owner="Deployment/frontend"),
        PodSpec("cart-0", NS, {"app": "cart"}, "n2", (GRPC,),
                readiness=Probe("grpc", 7070, period_s=1), owner="Deployment/cart"),
        PodSpec("broken-0", NS, {"app": "cart"}, "n3", (GRPC,),
                readiness=Probe("tcpSocket", 9999, period_s=1), owner="Deployment/broken"),
        PodSpec("store-0", NS, {"app": "store"}, "n3", (REDIS,),
                readiness=Probe("tcpSocket", "redis", period_s=1), hostname="store-0",
                subdomain="store", owner="StatefulSet/store"),
        PodSpec("store-1", NS, {"app": "store"}, "n1", (REDIS,),
                readiness=Probe("exec", period_s=1), hostname="store-1", subdomain="store",
                owner="StatefulSet/store"),
        PodSpec("loadgen", NS, {"app": "loadgen"}, "n1"),
    )
    services = (
        ServiceSpec("frontend", NS, "LoadBalancer", FRONTEND_IP, {"app": "frontend"},
                    (ServicePort(80, "http", "TCP", "http", 30080),),
                    external_traffic_policy=lb_policy),
        ServiceSpec("cart", NS, "ClusterIP", CART_IP, {"app": "cart"},
                    (ServicePort(7070, 7070, "TCP", "grpc"),)),
        ServiceSpec("store", NS, "ClusterIP", None, {"app": "store"},
                    (ServicePort(6379, "redis", "TCP", "redis"),)),
    )
    return Workload(namespaces={NS: {"kubernetes.io/metadata.name": NS}}, pods=pods,
                    services=services, network_policies=POLICIES if policies else ())
