"""hostNetwork baseline: pods use their node's own stack, no CNI plugin at all."""
from __future__ import annotations

from .. import pods
from ..node import Node, Pod
from .base import Variant


class HostNetwork(Variant):
    """The yardstick every other variant is compared with."""

    name = "host"
    wire = "plain IP between node IPs"
    host_network = True
    masquerades = False  # node to node: the node's own address, nothing to rewrite

    def attach_pod(self, node: Node, name: str, namespace: str = "default",
                   labels: dict[str, str] | None = None) -> Pod:
        return pods.host_network(node, name, namespace=namespace, labels=labels or {})
