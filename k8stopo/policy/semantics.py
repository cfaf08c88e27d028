"""The reference evaluator: what the Kubernetes API reference says a set of NetworkPolicies
allows, with no datapath at all.

Tests hold every enforcing agent (Felix's chains, weave-npc's) to this table: a connection is
allowed iff the source's egress allows it AND the destination's ingress allows it, where a
direction of a pod is isolated only when some policy of its namespace selects it and lists
that direction in ``policyTypes``; an isolated direction allows what the union of those
policies' rules allows. Named ports resolve against the destination pod's container ports
(for egress too); a non-pod endpoint matches only ipBlock peers.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..workload import ContainerPort
from .model import NetworkPolicy, Peer, PolicyPort, Rule


@dataclass(frozen=True)
class Host:
    """One end of a connection: a pod (``namespace`` set) or any other address."""

    ip: ipaddress.IPv4Address
    namespace: str | None = None  # None: not a pod (a node, something outside the cluster)
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()
    name: str = ""

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def peer_matches(peer: Peer, policy_ns: str, host: Host,
                 namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    """Does ``peer`` (of a policy in ``policy_ns``) match ``host``?"""
    if peer.ip_block is not None:
        return peer.ip_block.matches(host.ip)
    if not host.is_pod:
        return False
    assert host.namespace is not None
    if peer.namespace_selector is not None:
        ns_ok = peer.namespace_selector.matches(namespace_labels(namespaces, host.namespace))
    else:
        ns_ok = host.namespace == policy_ns
    pod_ok = peer.pod_selector is None or peer.pod_selector.matches(host.labels)
    return ns_ok and pod_ok


def namespace_labels(namespaces: Mapping[str, Mapping[str, str]], name: str) -> dict[str, str]:
    """A namespace's labels with ``kubernetes.io/metadata.name``, as the API server adds it."""
    return {**namespaces.get(name, {}), "kubernetes.io/metadata.name": name}


def resolve_port(port: PolicyPort, dst: Host) -> tuple[int, int] | None:
    """The port range a policy port stands for at ``dst``; None when a named port has no
    container port of that name and protocol there."""
    if port.port is None:
        return (1, 65535)
    if isinstance(port.port, str):
        for cp in dst.ports:
            if cp.name == port.port and cp.protocol == port.protocol:
                return (cp.container_port, cp.container_port)
        return None
    return (port.port, port.end_port or port.port)


def port_matches(ports: Iterable[PolicyPort], dst: Host, port: int, protocol: str) -> bool:
    ports = tuple(ports)
    if not ports:
        return True
    for p in ports:
        if p.protocol != protocol:
            continue
        span = resolve_port(p, dst)
        if span is not None and span[0] <= port <= span[1]:
            return True
    return False


def _rule_allows(rule: Rule, policy_ns: str, peer: Host, dst: Host, port: int, protocol: str,
                 namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if not port_matches(rule.ports, dst, port, protocol):
        return False
    return not rule.peers or any(peer_matches(p, policy_ns, peer, namespaces) for p in rule.peers)


def isolating(policies: Iterable[NetworkPolicy], pod: Host, direction: str) -> list[NetworkPolicy]:
    """The policies that select ``pod`` for ``direction`` ("Ingress" or "Egress")."""
    if not pod.is_pod:
        return []
    assert pod.namespace is not None
    return [p for p in policies
            if direction in p.policy_types and p.selects(pod.namespace, pod.labels)]


def allowed(policies: Iterable[NetworkPolicy], namespaces: Mapping[str, Mapping[str, str]],
            src: Host, dst: Host, port: int, protocol: str) -> bool:
    """Whether a new ``protocol`` connection from ``src`` to ``dst``:``port`` is allowed."""
    policies = tuple(policies)
    egress = isolating(policies, src, "Egress")
    if egress and not any(_rule_allows(r, p.namespace, dst, dst, port, protocol, namespaces)
                          for p in egress for r in p.egress):
        return False
    ingress = isolating(policies, dst, "Ingress")
    return not ingress or any(_rule_allows(r, p.namespace, src, dst, port, protocol, namespaces)
                              for p in ingress for r in p.ingress)


def truth_table(policies: Iterable[NetworkPolicy], namespaces: Mapping[str, Mapping[str, str]],
                hosts: Iterable[Host], port: int, protocol: str) -> dict[tuple[str, str], bool]:
    """Every ordered pair of ``hosts`` (keyed by name), as Kubernetes' netpol e2e suite
    tabulates it: a pod to itself never leaves its namespace and is always allowed
    (the suite's ``AllowLoopback``)."""
    policies, hosts = tuple(policies), tuple(hosts)
    return {(s.name, d.name): s is d or allowed(policies, namespaces, s, d, port, protocol)
            for s in hosts for d in hosts}
