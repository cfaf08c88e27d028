"""The shape of the underlay: N Kubernetes nodes on one L2 segment, or on two
subnets behind a router (``underlay="routed"``).

Describes only (Mininet's split): :mod:`k8stopo.cluster` builds it. The
segment's switch is a Linux bridge inside a network namespace of its own
(:class:`UnderlaySwitch`), not in the root namespace: there, the host's
bridge-netfilter would pass every underlay frame through the host's iptables
and conntrack (a Docker host's FORWARD DROP would silently break the run).
Inside its namespace bridge-netfilter is off, so the underlay behaves as a
plain switch and the run adds no link to the root namespace. Usable on its
own with Mininet's command line, e.g.::

    mn --custom k8stopo/topo.py --topo k8s,3 --controller none
    mn --custom k8stopo/topo.py --topo k8s,3,underlay=routed --controller none

The routed underlay splits the CIDR in two halves (172.20.0.0/17 and
172.20.128.0/17), each its own switch; the first half of the nodes sits on
the first subnet, the rest on the second (with 3 nodes n1 and n2 on the first,
n3 on the second, so the first and last node are always a router apart), each
keeping its host number (n3 = 172.20.128.3). The router ``r1`` is a namespace with
ip_forward on and the second-to-last address of each half (172.20.127.254,
172.20.255.254): every node's default gateway. On one segment that address
(172.20.255.254) stays absent, as no packet may leave the run.
"""
from __future__ import annotations

import ipaddress
import tempfile
from typing import Any

from mininet.node import Host
from mininet.topo import Topo

UNDERLAY_CIDR = "172.20.0.0/16"
SWITCH = "ul"  # the underlay switch's host name (its ports are ul-eth1..N)
BRIDGE = "br0"  # the bridge inside the switch's namespace
ROUTER = "r1"  # the router between the subnets of a routed underlay
UNDERLAYS = ("l2", "routed")  # spec.UNDERLAYS repeats it: this file must load alone


def node_name(index: int) -> str:
    """Kubernetes node names n1..nN (``index`` is 0-based)."""
    return f"n{index + 1}"


def subnets(cidr: str = UNDERLAY_CIDR, underlay: str = "l2") -> list[ipaddress.IPv4Network]:
    """The underlay's segments: the whole CIDR, or its two halves when routed."""
    net = ipaddress.IPv4Network(cidr)
    return [net] if underlay == "l2" else list(net.subnets(prefixlen_diff=1))


def switch_names(underlay: str = "l2") -> list[str]:
    return [SWITCH] if underlay == "l2" else [f"{SWITCH}{k + 1}" for k in range(2)]


def gateway(segment: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """A segment's router address: its second-to-last (172.20.255.254 for the /16)."""
    return segment[-2]


def segment_index(i: int, count: int, underlay: str = "l2") -> int:
    """Which segment node i (0-based) of ``count`` sits on: the first half on the first."""
    return 0 if underlay == "l2" or i < (count + 1) // 2 else 1


def node_ips(count: int, cidr: str = UNDERLAY_CIDR,
             underlay: str = "l2") -> list[ipaddress.IPv4Interface]:
    """Node i takes host number i+1 in its segment: n1 = 172.20.0.1/16 on one segment;
    with 3 nodes routed, n3 = 172.20.128.3/17."""
    nets = [subnets(cidr, underlay)[segment_index(i, count, underlay)] for i in range(count)]
    return [ipaddress.IPv4Interface(f"{net[i + 1]}/{net.prefixlen}") for i, net in enumerate(nets)]


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
        # one `ip -batch` for the bridge and every port: a thousand ports typed one by one
        # into the shell are a thousand round trips
        commands = [f"link add {BRIDGE} type bridge stp_state 0 forward_delay 0",
                    f"link set {BRIDGE} up",
                    *(f"link set {i.name} master {BRIDGE} up" for i in self.intfList()
                      if i.name != "lo")]
        with tempfile.NamedTemporaryFile("w", prefix=f"{self.name}-", suffix=".ip") as batch:
            batch.write("\n".join(commands) + "\n")
            batch.flush()
            self.cmd(f"ip -batch {batch.name}")
        return r


class UnderlayRouter(Host):
    """An IP router between the underlay's segments: one address per port, ip_forward on,
    no firewall (a namespace of its own, like the switches)."""

    def config(self, addresses: tuple[str, ...] = (), **params: Any) -> dict[str, Any]:
        r = super().config(**params)
        ports = [i for i in self.intfList() if i.name != "lo"]
        for intf, address in zip(ports, addresses):
            self.cmd(f"ip addr add {address} dev {intf.name}")
            self.cmd(f"ip link set {intf.name} up")
        self.cmd("sysctl -qw net.ipv4.ip_forward=1")
        return r


class K8sTopo(Topo):
    """Kubernetes nodes n1..nN, each with one NIC on an underlay switch; with
    ``underlay="routed"`` two switches and a router between them."""

    def build(self, nodes: int = 2, cidr: str = UNDERLAY_CIDR, underlay: str = "l2") -> None:
        if underlay not in UNDERLAYS:
            raise ValueError(f"underlay {underlay!r} is not one of {', '.join(UNDERLAYS)}")
        nets = subnets(cidr, underlay)
        switches = [self.addHost(name, cls=UnderlaySwitch, ip=None)
                    for name in switch_names(underlay)]
        if underlay == "routed":
            router = self.addHost(ROUTER, cls=UnderlayRouter, ip=None,
                                  addresses=tuple(f"{gateway(n)}/{n.prefixlen}" for n in nets))
            for sw in switches:
                self.addLink(router, sw)
        for i, ip in enumerate(node_ips(nodes, cidr, underlay)):
            self.addLink(self.addHost(node_name(i), ip=ip.with_prefixlen),
                         switches[segment_index(i, nodes, underlay)])


topos = {"k8s": K8sTopo}
