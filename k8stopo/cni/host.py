"""hostNetwork baseline: pods use their node's own stack, no CNI plugin at all."""
from __future__ import annotations

from .base import Variant


class HostNetwork(Variant):
    """The yardstick every other variant is compared with."""

    name = "host"
    wire = "plain IP between node IPs"
    host_network = True
