"""The interface every CNI variant implements.

A variant plays two parts, as in a real cluster: the *node agent* (flanneld,
calico-node with BIRD, weave router) that programs the node's datapath, and the
*CNI network configuration* that the agent writes for kubelet, which the real
reference plugins in /usr/lib/cni then execute for every pod.

Life of a cluster (driven by :class:`k8stopo.cluster.Cluster`)::

    check(spec)            before anything exists: bad input -> SpecError
    setup_node(node)       per node: devices, sysctls, config files
    connect()              all nodes known: program peers / start daemons
    netconf(node)          CNI config handed to the plugins for each pod
    pod_added(pod)         per pod, after the plugin ran (agent-side fix-ups)
    wait_ready(timeout)    block until the datapath has converged
    stop()                 stop the agent's daemons (before pods are deleted)
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, ClassVar

from .. import ipam
from ..spec import MIN_MTU, ClusterSpec, SpecError, ipv4_network

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..node import Node, Pod

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def render(template: str, **values: object) -> str:
    """Fill one of k8stopo/templates (daemon configs and rule sets live there, not in code)."""
    return Template((TEMPLATES / template).read_text()).substitute(values)


class Variant:
    """Base class: a hostNetwork-free variant with no encapsulation."""

    name: ClassVar[str]
    #: one line: what crosses the underlay (SPEC's "on the underlay wire")
    wire: ClassVar[str]
    #: the real project's default pod CIDR and per-node range size
    pod_cidr: ClassVar[str] = ""
    node_prefixlen: ClassVar[int] = 24
    #: bytes the datapath adds to every packet on the underlay
    overhead: ClassVar[int] = 0
    #: doctor probe names this variant needs
    requires: ClassVar[tuple[str, ...]] = ("netns", "veth", "mnexec", "nsenter")
    #: pods share the node's namespace (hostNetwork)
    host_network: ClassVar[bool] = False

    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster

    # -- before anything exists -------------------------------------------------
    @classmethod
    def check(cls, spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
        """Validate the spec for this variant; return each node's pod range."""
        if spec.mtu - cls.overhead < MIN_MTU:
            raise SpecError(f"MTU {spec.mtu} leaves no room for {cls.name}'s {cls.overhead}-byte "
                            f"encapsulation (pods would get {spec.mtu - cls.overhead} < {MIN_MTU})")
        if cls.host_network:
            return []
        pod_cidr = ipv4_network(spec.pod_cidr or cls.pod_cidr, "pod CIDR")
        underlay = ipv4_network(spec.underlay_cidr, "underlay CIDR")
        if pod_cidr.overlaps(underlay):
            raise SpecError(f"pod CIDR {pod_cidr} overlaps the underlay {underlay}")
        ranges = ipam.node_ranges(pod_cidr, spec.node_block or cls.node_prefixlen, spec.nodes)
        capacity = ipam.host_local_capacity(ranges[0], cls.gateway(ranges[0]))
        if spec.pods_per_node > capacity:
            raise SpecError(f"{spec.pods_per_node} pods per node do not fit in a node's "
                            f"{ranges[0].prefixlen}-bit range ({capacity} addresses)")
        return ranges

    @classmethod
    def gateway(cls, pod_range: ipaddress.IPv4Network) -> ipaddress.IPv4Address | None:
        """The pods' default gateway (taken from ``pod_range`` when inside it)."""
        return pod_range[1]

    # -- the node agent -----------------------------------------------------------
    @property
    def pod_mtu(self) -> int:
        return self.cluster.spec.mtu - self.overhead

    def setup_node(self, node: "Node") -> None:
        """Per-node agent set-up; ip_forward is already on."""

    def install_rules(self, node: "Node", template: str) -> None:
        """Load the agent's iptables rules into the node (kept as a file in the run's state)."""
        rules = render(template, node=node.name, network=self.cluster.pod_cidr,
                       subnet=node.pod_cidr)
        self.cluster.state.path(node.name, template).write_text(rules)
        node.run(["iptables-restore", "--noflush"], input=rules)

    def connect(self) -> None:
        """Program every node for its peers (all nodes exist now)."""

    def netconf(self, node: "Node") -> dict[str, Any]:
        """The CNI network configuration for pods on ``node``."""
        raise NotImplementedError

    def pod_added(self, pod: "Pod") -> None:
        """Agent-side work after the CNI plugin attached ``pod``."""

    def wait_ready(self, timeout: float) -> None:
        """Return once the datapath has converged; raise TimeoutError otherwise."""

    def stop(self) -> None:
        """Stop the agent's daemons (their pids are tracked in any case)."""
