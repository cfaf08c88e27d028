"""What kube-proxy knows on every node: service ports and their ready endpoints.

The same model feeds all three modes, as kube-proxy's ServicePortMap and
EndpointsMap feed each of its proxiers. Endpoints are computed as the
EndpointSlice controller would: pods of the Service's namespace whose labels
match its (non-empty) selector, that are ready, with the target port resolved
by number or by the pod's container port name (a pod without that named port
is no endpoint). Headless Services (no ClusterIP) are skipped, as kube-proxy
skips them.

Chain names are hashed exactly as pkg/proxy/iptables/proxier.go and
pkg/proxy/nftables/proxier.go hash them, so rules read like a real node's.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..node import Pod
from ..spec import ClusterSpec, SpecError
from ..workload import ServicePort, ServiceSpec, Workload


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


@dataclass(frozen=True)
class Endpoint:
    ip: ipaddress.IPv4Address
    port: int
    pod: str  # the pod's handle (Pod.name)

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePortInfo:
    """One port of one Service, as kube-proxy's servicePortInfo."""

    namespace: str
    service: str
    port_name: str  # "" when the Service has a single unnamed port
    protocol: str  # lower case: tcp | udp
    cluster_ip: ipaddress.IPv4Address
    port: int
    node_port: int | None
    affinity_timeout: int | None
    endpoints: tuple[Endpoint, ...]
    #: a LoadBalancer's ingress IP (status.loadBalancer.ingress[].ip, from --lb-pool)
    load_balancer_ip: ipaddress.IPv4Address | None = None
    #: externalTrafficPolicy Local: external traffic only to this node's endpoints, unmasqueraded
    external_local: bool = False

    def local_endpoints(self, pods: Iterable[str]) -> tuple[Endpoint, ...]:
        """The endpoints among ``pods`` (a node's pods' names)."""
        mine = set(pods)
        return tuple(e for e in self.endpoints if e.pod in mine)

    @property
    def name(self) -> str:
        """ServicePortName.String(): ``ns/svc`` or ``ns/svc:port``."""
        base = f"{self.namespace}/{self.service}"
        return f"{base}:{self.port_name}" if self.port_name else base

    # -- iptables mode (servicePortChainName and friends) --
    @property
    def svc_chain(self) -> str:
        return "KUBE-SVC-" + _hash(self.name + self.protocol)[:16]

    @property
    def ext_chain(self) -> str:
        return "KUBE-EXT-" + _hash(self.name + self.protocol)[:16]

    @property
    def fw_chain(self) -> str:
        """The load balancer's firewall chain (loadBalancerSourceRanges; none here: it
        only jumps on), serviceFirewallChainName."""
        return "KUBE-FW-" + _hash(self.name + self.protocol)[:16]

    @property
    def svl_chain(self) -> str:
        """externalTrafficPolicy Local's node-local endpoints, serviceLocalChainName."""
        return "KUBE-SVL-" + _hash(self.name + self.protocol)[:16]

    def sep_chain(self, ep: Endpoint) -> str:
        return "KUBE-SEP-" + _hash(self.name + self.protocol + str(ep))[:16]

    # -- nftables mode (servicePortChainNameBase, hashAndTruncate) --
    @property
    def nft_base(self) -> str:
        name = f"{self.namespace}/{self.service}/{self.protocol}/{self.port_name}"
        return f"{_hash(name)[:8]}-{name}"

    def nft_endpoint_base(self, ep: Endpoint) -> str:
        name = (f"{self.namespace}/{self.service}/{self.protocol}/{self.port_name}"
                f"__{ep.ip}/{ep.port}")
        return f"{_hash(name)[:8]}-{name}"


def _target(port: ServicePort, pod: Pod) -> int | None:
    """The pod's port for this service port (FindPort): a number as is, a name looked
    up among the pod's container ports of the same protocol."""
    if isinstance(port.target_port, int):
        return port.target_port
    for cp in pod.ports:
        if cp.name == port.target_port and cp.protocol == port.protocol:
            return cp.container_port
    return None


def selects(svc: ServiceSpec, pod: Pod) -> bool:
    """Whether the Service's (non-empty) selector picks the pod, in its namespace."""
    return (bool(svc.selector) and pod.namespace == svc.namespace
            and all(pod.labels.get(k) == v for k, v in svc.selector.items()))


def endpoints(svc: ServiceSpec, port: ServicePort, pods: Iterable[Pod]) -> tuple[Endpoint, ...]:
    """The ready endpoints of one service port, sorted as an EndpointSlice lists them."""
    found = []
    for pod in pods:
        if pod.ready and selects(svc, pod):
            target = _target(port, pod)
            if target is not None:
                found.append(Endpoint(pod.ip, target, pod.name))
    return tuple(sorted(found, key=lambda e: (int(e.ip), e.port)))


def service_ports(workload: Workload | None, pods: Sequence[Pod]) -> list[ServicePortInfo]:
    """Every proxied service port of the workload with its current endpoints."""
    return ports_of(workload.services if workload else (), pods)


def ports_of(services: Iterable[ServiceSpec], pods: Sequence[Pod]) -> list[ServicePortInfo]:
    """Every proxied port of these Services with its current endpoints."""
    out = []
    for svc in services:
        if svc.cluster_ip is None:
            continue  # headless: DNS only
        for port in svc.ports:
            out.append(ServicePortInfo(
                namespace=svc.namespace, service=svc.name, port_name=port.name or "",
                protocol=port.protocol.lower(), cluster_ip=svc.cluster_ip, port=port.port,
                node_port=port.node_port, affinity_timeout=svc.session_affinity_timeout,
                endpoints=endpoints(svc, port, pods), load_balancer_ip=svc.load_balancer_ip,
                external_local=svc.external_traffic_policy == "Local"))
    return out


def refuse_local(spec: ClusterSpec, mode: str) -> None:
    """SpecError for externalTrafficPolicy Local in a mode that does not honour it (only
    the iptables mode has its node-local chains here)."""
    workload = spec.workload
    for svc in workload.services if workload else ():
        if svc.external_traffic_policy == "Local" and svc.type in ("NodePort", "LoadBalancer"):
            raise SpecError(f"Service {svc.namespace}/{svc.name}: externalTrafficPolicy Local "
                            f"is not emulated in kube-proxy's {mode} mode (use iptables)")


def describe(ports: Sequence[ServicePortInfo]) -> str:
    """One line per service port: name, address, NodePort, endpoints (for ``up``)."""
    lines = []
    for s in ports:
        node_port = f" nodePort {s.node_port}" if s.node_port else ""
        if s.load_balancer_ip:
            node_port += f" loadBalancer {s.load_balancer_ip}"
        eps = ", ".join(str(e) for e in s.endpoints) or "no endpoints"
        lines.append(f"  svc {s.name:<24} {s.cluster_ip}:{s.port}/{s.protocol}{node_port} -> {eps}")
    return "\n".join(lines)
