"""What every NetworkPolicy agent shares: the cluster's policies and pods as the agent's
informers would see them, a resync whenever a pod appears, and the choice of agent by variant.

A real agent (Felix, weave-npc) watches Namespaces, Pods and NetworkPolicies and rewrites its
node's rules and ipsets on every change; here the set of policies is fixed for the run
(``cluster.spec.workload.network_policies``) and pods come as the cluster attaches them, so the
agent programs every node once all pods exist (``wait_ready``) and again for each later pod.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..agent import Agent
from .model import NetworkPolicy, parse_all
from .semantics import Host, namespace_labels

if TYPE_CHECKING:
    from ..cni.base import Variant
    from ..context import ClusterContext
    from ..node import Node, Pod
    from ..spec import ClusterSpec


@dataclass
class IPSet:
    """One ipset an agent keeps: its type (hash:net, hash:ip,port, list:set) and members."""

    kind: str
    members: list[str]


def load_ipsets(node: "Node", sets: dict[str, IPSet]) -> None:
    """One ``ipset restore`` in the node's namespace leaving each set holding exactly its
    members (sets a list:set names must come earlier in ``sets``)."""
    lines = []
    for name, s in sets.items():
        lines += [f"create {name} {s.kind}" + (" family inet" if s.kind.startswith("hash") else "")
                  + " -exist", f"flush {name}"]
        lines += [f"add {name} {m}" for m in s.members]
    if lines:
        node.run(["ipset", "restore"], input="\n".join(lines) + "\n")


def policies_of(spec: "ClusterSpec") -> tuple[NetworkPolicy, ...]:
    """The run's NetworkPolicies, parsed (SpecError on anything not implemented)."""
    return parse_all(spec.workload.network_policies) if spec.workload else ()


def host(pod: "Pod") -> Host:
    """A pod as the evaluator and the agents' selectors see it."""
    return Host(pod.ip, pod.namespace, dict(pod.labels), tuple(pod.ports),
                f"{pod.namespace}/{pod.name}")


class PolicyAgent(Agent):
    """Base of the enforcing agents; subclasses render and load one node's rules."""

    requires: ClassVar[tuple[str, ...]] = ("conntrack", "ipset")

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.policies = policies_of(cluster.spec)
        workload = cluster.spec.workload
        self.namespaces: dict[str, dict[str, str]] = dict(workload.namespaces) if workload else {}
        self.synced = False
        self.loaded: dict[str, dict[str, IPSet]] = {}  # node -> the ipsets it holds

    @classmethod
    def validate(cls, spec: "ClusterSpec") -> None:
        policies_of(spec)

    @classmethod
    def serves(cls, variant: type["Variant"]) -> bool:
        """Whether this agent is the one the variant's real project runs."""
        raise NotImplementedError

    # -- what the informers would hold ----------------------------------------------------
    def pods(self) -> list["Pod"]:
        """Every pod with its own network namespace (hostNetwork pods are never selected)."""
        return [p for p in self.cluster.pods if not p.host_network]

    def ns_labels(self, name: str) -> dict[str, str]:
        return namespace_labels(self.namespaces, name)

    def all_namespaces(self) -> list[str]:
        return sorted({*self.namespaces, *(p.namespace for p in self.pods())})

    def update(self, documents: Sequence[dict[str, Any]]) -> None:
        """New NetworkPolicies replace the old ones, as an informer's update would (the
        nodes are reprogrammed at once, stale chains and ipsets removed)."""
        self.policies = parse_all(documents)
        if self.synced:
            self.sync()

    # -- lifecycle ------------------------------------------------------------------------
    def pod_added(self, pod: "Pod") -> None:
        if self.synced:
            self.sync()

    def wait_ready(self, timeout: float) -> None:
        self.sync()
        self.synced = True

    def sync(self) -> None:
        for node in self.cluster.nodes:
            self.sync_node(node)

    def sync_node(self, node: "Node") -> None:
        raise NotImplementedError

    def load(self, node: "Node", sets: dict[str, IPSet], rules: str, record: str) -> None:
        """Sets first (rules name them), then one ``iptables-restore --noflush`` batch after
        its own ``--test``, kept in the run's state as ``record``."""
        load_ipsets(node, sets)
        self.cluster.state.path(node.name, record).write_text(rules)
        node.run(["iptables-restore", "--test", "--noflush"], input=rules)
        node.run(["iptables-restore", "--noflush"], input=rules)
        stale = {k: v for k, v in self.loaded.get(node.name, {}).items() if k not in sets}
        for name in sorted(stale, key=lambda n: stale[n].kind != "list:set"):  # lists first
            node.run(["ipset", "destroy", name])
        self.loaded[node.name] = dict(sets)
