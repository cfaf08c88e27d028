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

    def attach_pod(self, node: Node, holder: int | None, name: str, namespace: str,
                   labels: dict[str, str]) -> Pod:
        return pods.host_network(node, name, namespace=namespace, labels=labels)
