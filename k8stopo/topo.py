"""The shape of the underlay: N Kubernetes nodes on one L2 segment.

Describes only (Mininet's split): :mod:`k8stopo.cluster` builds it. Usable on
its own with Mininet's command line, e.g.::

    mn --custom k8stopo/topo.py --topo k8s,3 --switch lxbr --controller none
"""
from __future__ import annotations

import ipaddress

from mininet.topo import Topo

UNDERLAY_CIDR = "172.20.0.0/16"


def node_name(index: int) -> str:
    """Kubernetes node names n1..nN (``index`` is 0-based)."""
    return f"n{index + 1}"


def node_ips(count: int, cidr: str = UNDERLAY_CIDR) -> list[ipaddress.IPv4Interface]:
    """Node i gets the (i+1)-th address of the underlay: n1 = 172.20.0.1/16."""
    net = ipaddress.IPv4Network(cidr)
    return [ipaddress.IPv4Interface(f"{net[i + 1]}/{net.prefixlen}") for i in range(count)]


class K8sTopo(Topo):
    """Kubernetes nodes n1..nN, each with one NIC on a shared underlay switch."""

    def build(self, nodes: int = 2, switch: str = "s1", cidr: str = UNDERLAY_CIDR) -> None:
        sw = self.addSwitch(switch, dpid="1")
        for i, ip in enumerate(node_ips(nodes, cidr)):
            self.addLink(self.addHost(node_name(i), ip=ip.with_prefixlen), sw)


topos = {"k8s": K8sTopo}
