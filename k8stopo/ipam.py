"""Carving the cluster's pod CIDR into one range per node.

Mirrors what Kubernetes does for flannel (kube-controller-manager gives node i
the i-th /24 of 10.244.0.0/16) and what Calico IPAM does with block affinity
(a /26 block of 192.168.0.0/16 per node), deterministically in node order.
"""
from __future__ import annotations

import ipaddress
import itertools

from .spec import SpecError


def node_ranges(pod_cidr: ipaddress.IPv4Network, prefixlen: int,
                count: int) -> list[ipaddress.IPv4Network]:
    """The first ``count`` blocks of size /prefixlen inside ``pod_cidr``."""
    if prefixlen < pod_cidr.prefixlen or prefixlen > 30:
        raise SpecError(f"a per-node /{prefixlen} range does not fit in pod CIDR {pod_cidr}")
    available = 2 ** (prefixlen - pod_cidr.prefixlen)
    if count > available:
        raise SpecError(f"pod CIDR {pod_cidr} holds {available} /{prefixlen} node ranges, "
                        f"not {count}")
    return list(itertools.islice(pod_cidr.subnets(new_prefix=prefixlen), count))


def host_local_capacity(block: ipaddress.IPv4Network,
                        gateway: ipaddress.IPv4Address | None) -> int:
    """How many pods host-local can address in ``block``.

    host-local never hands out the network and broadcast addresses, nor the
    gateway when it lies inside the block.
    """
    reserved = 2 + (1 if gateway is not None and gateway in block else 0)
    return max(block.num_addresses - reserved, 0)
