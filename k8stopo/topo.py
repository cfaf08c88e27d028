"""The shape of the underlay: N Kubernetes nodes on one L2 segment.

Describes only (Mininet's split): :mod:`k8stopo.cluster` builds it. The
segment's switch is a Linux bridge inside a network namespace of its own
(:class:`UnderlaySwitch`), not in the root namespace: there, the host's
bridge-netfilter would pass every underlay frame through the host's iptables
and conntrack (a Docker host's FORWARD DROP would silently break the run).
Inside its namespace bridge-netfilter is off, so the underlay behaves as a
plain switch and the run adds no link to the root namespace. Usable on its
own with Mininet's command line, e.g.::

    mn --custom k8stopo/topo.py --topo k8s,3 --controller none
"""
from __future__ import annotations

import ipaddress
from typing import Any

from mininet.node import Host
from mininet.topo import Topo

UNDERLAY_CIDR = "172.20.0.0/16"
SWITCH = "ul"  # the underlay switch's host name (its ports are ul-eth1..N)
BRIDGE = "br0"  # the bridge inside the switch's namespace


def node_name(index: int) -> str:
    """Kubernetes node names n1..nN (``index`` is 0-based)."""
    return f"n{index + 1}"


def node_ips(count: int, cidr: str = UNDERLAY_CIDR) -> list[ipaddress.IPv4Interface]:
    """Node i gets the (i+1)-th address of the underlay: n1 = 172.20.0.1/16."""
    net = ipaddress.IPv4Network(cidr)
    return [ipaddress.IPv4Interface(f"{net[i + 1]}/{net.prefixlen}") for i in range(count)]


class UnderlaySwitch(Host):
    """An L2 switch: a Linux bridge in its own namespace, bridge-netfilter off there.

    Mininet's own LinuxBridge lives in the root namespace, where the host's
    firewall sees every frame; this one is a Mininet host, so its namespace goes
    with its shell. The bridge takes every port the topology gave the host.
    """

    def config(self, **params: Any) -> dict[str, Any]:
        r = super().config(**params)
        # bridge-nf sysctls are per namespace; absent when br_netfilter is not loaded.
        for table in ("iptables", "ip6tables", "arptables"):
            self.cmd(f"sysctl -qw net.bridge.bridge-nf-call-{table}=0 2>/dev/null")
        self.cmd(f"ip link add {BRIDGE} type bridge stp_state 0 forward_delay 0")
        self.cmd(f"ip link set {BRIDGE} up")
        for intf in self.intfList():
            if intf.name != "lo":
                self.cmd(f"ip link set {intf.name} master {BRIDGE} up")
        return r


class K8sTopo(Topo):
    """Kubernetes nodes n1..nN, each with one NIC on a shared underlay switch."""

    def build(self, nodes: int = 2, cidr: str = UNDERLAY_CIDR) -> None:
        sw = self.addHost(SWITCH, cls=UnderlaySwitch, ip=None)
        for i, ip in enumerate(node_ips(nodes, cidr)):
            self.addLink(self.addHost(node_name(i), ip=ip.with_prefixlen), sw)


topos = {"k8s": K8sTopo}
