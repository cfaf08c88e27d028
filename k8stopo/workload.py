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


@dataclass(frozen=True)
class PodSpec:
    """One pod as the API would hold it once scheduled (Deployments are expanded to these)."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    node_name: str | None = None  # None: spread over the nodes in order
    ports: tuple[ContainerPort, ...] = ()


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
    type: str = "ClusterIP"  # ClusterIP | NodePort
    cluster_ip: ipaddress.IPv4Address | None = None  # None: headless ("None" in YAML)
    selector: dict[str, str] = field(default_factory=dict)
    ports: tuple[ServicePort, ...] = ()
    session_affinity_timeout: int | None = None  # seconds, when sessionAffinity: ClientIP


@dataclass(frozen=True)
class Workload:
    """Everything the manifests asked for, checked; NetworkPolicy documents are kept as the
    API's dicts and parsed by :mod:`k8stopo.policy`."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    pods: tuple[PodSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    network_policies: tuple[dict[str, Any], ...] = ()


def pod_handle(name: str, namespace: str) -> str:
    """The cluster-wide unique name of a pod from manifests (its Mininet host name):
    ``name.namespace``; neither part may hold a dot, so no two pods share one."""
    return f"{name}.{namespace}"


def pod_ref(handle: str, namespace: str) -> str:
    """``namespace/name`` of a pod, as Kubernetes (and its netpol e2e tables) print it."""
    suffix = f".{namespace}"
    return f"{namespace}/{handle[:-len(suffix)] if handle.endswith(suffix) else handle}"
