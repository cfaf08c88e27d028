"""What bench's Service scenarios need: an iperf3 Service, and where their ends are.

When no manifests say otherwise, bench runs the plain pods it always runs plus
one backend pod on node B (the last node) behind a NodePort Service
``k8stopo-iperf3`` with TCP and UDP port 5201 (iperf3 uses both for a UDP test),
so that ``pod-to-service`` dials a ClusterIP whose endpoint is on another node
than the client (node A's first pod), and ``pod-to-nodeport`` dials node B's IP
at the NodePort. The iperf3 server runs in the backend pod; the client dials
the Service's address, which kube-proxy sends to it.
"""
from __future__ import annotations

import dataclasses

from ..cluster import Cluster
from ..manifests import NODE_PORT_RANGE, SERVICE_CIDR
from ..node import Endpoint, Node
from ..spec import SpecError
from ..topo import node_name
from ..workload import PodSpec, ServicePort, ServiceSpec, Workload, pod_handle
from .model import service_ports

SERVICE_SCENARIOS = ("pod-to-service", "pod-to-nodeport")
IPERF3_PORT = 5201
SERVICE = "k8stopo-iperf3"
BACKEND = "k8stopo-iperf3-server"
# the top of the service CIDR and of the NodePort range, where manifests rarely go
CLUSTER_IP = SERVICE_CIDR[-2]
NODE_PORT = NODE_PORT_RANGE[-1]


def bench_workload(nodes: int, pods_per_node: int, base: Workload | None) -> Workload:
    """``base`` (the manifests, or bench's plain pods when None) plus the iperf3 Service."""
    if base is None:
        base = Workload(pods=tuple(PodSpec(name=f"pod-{node_name(i)}-{j}",
                                           node_name=node_name(i))
                                   for i in range(nodes) for j in range(pods_per_node)))
    backend = PodSpec(name=BACKEND, labels={"app": BACKEND}, node_name=node_name(nodes - 1))
    ports = tuple(ServicePort(port=IPERF3_PORT, target_port=IPERF3_PORT, protocol=proto,
                              name=proto.lower()) for proto in ("TCP", "UDP"))
    if any(s.cluster_ip == CLUSTER_IP or NODE_PORT in {p.node_port for p in s.ports}
           for s in base.services):
        raise SpecError(f"the manifests use {CLUSTER_IP} or NodePort {NODE_PORT}, which bench's "
                        f"{SERVICE} Service needs")
    service = ServiceSpec(name=SERVICE, type="NodePort", cluster_ip=CLUSTER_IP,
                          selector={"app": BACKEND},
                          ports=tuple(dataclasses.replace(p, node_port=NODE_PORT)
                                      for p in ports))
    return dataclasses.replace(base, pods=(*base.pods, backend),
                               services=(*base.services, service))


def service_ends(cluster: Cluster, scenario: str) -> tuple[Endpoint, str, int, Endpoint]:
    """(client, address dialled, port dialled, backend pod) of a Service scenario."""
    tcp = next(s for s in service_ports(cluster.spec.workload, cluster.pods)
               if s.service == SERVICE and s.protocol == "tcp")
    backend = cluster.pod(pod_handle(BACKEND, "default"))
    a: Node = cluster.nodes[0]
    client = a.pods[0]
    if scenario == "pod-to-service":
        return client, str(tcp.cluster_ip), tcp.port, backend
    assert tcp.node_port is not None
    return client, str(cluster.nodes[-1].ip), tcp.node_port, backend
