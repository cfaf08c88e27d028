"""What runs on the cluster, in the Kubernetes API's shapes: the contract between the
manifest reader (:mod:`k8stopo.manifests`) and the agents that serve it (pods'
servers, kube-proxy, cluster DNS, NetworkPolicy).

Plain data, no Mininet: a notebook or a test can build one by hand.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ContainerPort:
    """``spec.containers[].ports[]``: every pod answers on each with its ``namespace/name``."""

    container_port: int
    protocol: str = "TCP"  # TCP | UDP (| SCTP is refused)
    name: str | None = None
    host_port: int | None = None  # hostPort: the node's IP at this port (the portmap plugin)


@dataclass(frozen=True)
class Probe:
    """A container's ``readinessProbe``: what the EndpointSlice controller's Ready follows.

    ``kind`` is the handler: ``tcpSocket`` connects, ``httpGet`` wants an HTTP answer,
    ``grpc`` is satisfied when the port is served (the pod servers speak no gRPC), ``exec``
    counts as passing (no container image runs here)."""

    kind: str  # tcpSocket | httpGet | grpc | exec
    port: int | str | None = None  # a number or a container port's name (None for exec)
    path: str = "/"  # httpGet only
    initial_delay_s: int = 0
    period_s: int = 10
    timeout_s: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class PodSpec:
    """One pod as the API would hold it once scheduled (Deployments are expanded to these)."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    node_name: str | None = None  # None: spread over the nodes in order
    ports: tuple[ContainerPort, ...] = ()
    readiness: Probe | None = None  # None: Ready as soon as it runs
    host_network: bool = False  # in its node's own network namespace
    dns_policy: str = "ClusterFirst"  # ClusterFirst | ClusterFirstWithHostNet | Default | None
    hostname: str | None = None  # spec.hostname (StatefulSet: the pod's name)
    subdomain: str | None = None  # spec.subdomain (StatefulSet: its headless serviceName)
    owner: str | None = None  # "StatefulSet/web", "DaemonSet/agent", … (None: a bare Pod)


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str  # a number, or a container port's name
    protocol: str = "TCP"
    name: str | None = None
    node_port: int | None = None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str = "default"
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer (a NodePort + external IP)
    cluster_ip: ipaddress.IPv4Address | None = None  # None: headless ("None" in YAML)
    selector: dict[str, str] = field(default_factory=dict)
    ports: tuple[ServicePort, ...] = ()
    session_affinity_timeout: int | None = None  # seconds, when sessionAffinity: ClientIP
    load_balancer_ip: ipaddress.IPv4Address | None = None  # from --lb-pool (MetalLB L2)
    external_traffic_policy: str = "Cluster"  # Cluster | Local
    publish_not_ready: bool = False  # publishNotReadyAddresses


@dataclass(frozen=True)
class Workload:
    """Everything the manifests asked for, checked; NetworkPolicy documents are kept as the
    API's dicts and parsed by :mod:`k8stopo.policy`."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    pods: tuple[PodSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    network_policies: tuple[dict[str, Any], ...] = ()
    #: what was accepted and ignored as having no effect on the network, one entry per
    #: occurrence: an object ("ServiceAccount shop/cart"; "ClusterRole agent" without a
    #: namespace) or a field of one ("Deployment shop/cart spec.template.spec.containers[].env");
    #: k8stopo.apifields says why, k8stopo.manifests.summary counts them
    ignored: tuple[str, ...] = ()


def pod_handle(name: str, namespace: str) -> str:
    """The cluster-wide unique name of a pod from manifests (its Mininet host name):
    ``name.namespace``; neither part may hold a dot, so no two pods share one."""
    return f"{name}.{namespace}"


def pod_ref(handle: str, namespace: str) -> str:
    """``namespace/name`` of a pod, as Kubernetes (and its netpol e2e tables) print it."""
    suffix = f".{namespace}"
    return f"{namespace}/{handle[:-len(suffix)] if handle.endswith(suffix) else handle}"
