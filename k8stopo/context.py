"""What agents and variants see of their cluster: a small typed interface.

:class:`k8stopo.cluster.Cluster` implements it; agents (:mod:`k8stopo.agent`) and CNI
variants (:mod:`k8stopo.cni`) are given it at construction, so they depend on these few
members, not on how the cluster builds itself, and the type checker follows every call
across. Imports here are for the checker only: at run time this module needs none of
them, so no import circle runs through it.
"""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:
    from .agent import Agent
    from .cni.base import Variant
    from .node import Node, Pod
    from .runstate import RunState
    from .spec import ClusterSpec
    from .underlay import Underlay
    from .workload import ServiceSpec

#: a pod to create: (node, name, Kubernetes namespace, labels)
PodPlan = tuple["Node", str, str, dict[str, str]]


class ClusterContext(Protocol):
    """The cluster as its agents use it."""

    @property
    def spec(self) -> ClusterSpec:
        """What was asked for."""

    @property
    def state(self) -> RunState:
        """The run's record and state directory (daemons' configs and logs go there)."""

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network | None:
        """The cluster's pod network (None with hostNetwork)."""

    @property
    def underlay(self) -> Underlay:
        """The wire: segments' gateways, the routed underlay's router, switch ports."""

    @property
    def nodes(self) -> Sequence[Node]:
        """Every node, in order (n1 first)."""

    @property
    def pods(self) -> list[Pod]:
        """Every pod attached so far, node by node."""

    @property
    def variant(self) -> Variant:
        """The CNI variant (the first agent)."""

    @property
    def agents(self) -> Sequence[Agent]:
        """Every agent, the variant first."""

    @property
    def services(self) -> tuple[ServiceSpec, ...]:
        """The workload's Services, then the agents' own (kube-dns)."""

    def node(self, name: str) -> Node:
        """A node by name (KeyError if none)."""

    def pod(self, name: str) -> Pod:
        """A pod by name (KeyError if none)."""

    def set_ready(self, pod: Pod, ready: bool) -> None:
        """Mark a pod (not) ready; every agent follows."""
