"""kube-proxy as a node agent: one instance programs every node, each mode its way.

kube-proxy runs on every node and renders the same Services into that node's
rules. Here one agent object plays all nodes' kube-proxies: ``sync()`` renders
and loads one node's rules at a time, as each node's proxier would after a
Service or EndpointSlice change (a pod became (not) ready, a pod was added).
The time each node's load took is kept (``sync_seconds``) for the rule-scaling
experiment.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from ..agent import Agent
from .model import ServicePortInfo, ports_of

if TYPE_CHECKING:
    from ..context import ClusterContext
    from ..node import Node, Pod


class KubeProxy(Agent):
    """What every mode shares: the service model and when to resync."""

    mode: ClassVar[str]
    serves_services = True

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.synced = False
        self.sync_seconds: dict[str, float] = {}  # node -> seconds its last load took

    def service_ports(self) -> list[ServicePortInfo]:
        """The workload's Services and the agents' own (kube-dns), as a node sees them."""
        return ports_of(self.cluster.services, self.cluster.pods)

    def setup_node(self, node: "Node") -> None:
        # Bridged pods (cni0, weave) reach a Service backend on their own bridge: the
        # reply must go back through the node's conntrack to be un-DNATed, which is why
        # kube-proxy turns bridge-nf-call-iptables on (per namespace since Linux 5.3).
        if node.run(["test", "-e", "/proc/sys/net/bridge"], check=False).returncode == 0:
            node.sysctl("net.bridge.bridge-nf-call-iptables", 1)

    def sync(self) -> None:
        """Render and load every node's rules for the current services and endpoints."""
        ports = self.service_ports()
        for node in self.cluster.nodes:
            self.sync_seconds[node.name] = self.load(node, ports)
        self.synced = True

    def load(self, node: "Node", ports: list[ServicePortInfo]) -> float:
        """Program ``node``; return the seconds the kernel load itself took (after the
        rule set passed its tool's own check), the figure kube-proxy's sync metric has."""
        raise NotImplementedError

    def timed_load(self, node: "Node", argv: list[str], rules: str) -> float:
        """Run one loader batch on ``node`` and time it."""
        started = time.monotonic()
        node.run(argv, input=rules, timeout=600)
        return time.monotonic() - started

    def wait_ready(self, timeout: float) -> None:
        self.sync()

    def pod_added(self, pod: "Pod") -> None:
        if self.synced:  # a pod added after start-up may be a new endpoint
            self.sync()

    def pod_changed(self, pod: "Pod") -> None:
        self.sync()
