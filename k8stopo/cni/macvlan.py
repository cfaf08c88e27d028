"""macvlan: pods are macvlan children of their node's underlay NIC, on the underlay itself.

The real reference plugin (containernetworking/plugins ``plugins/main/macvlan``)
creates the child in bridge mode with ``master`` = the node's NIC, moves it into
the pod as ``eth0`` and applies host-local IPAM. There is no node agent: no
device, route or iptables rule on the node, no encapsulation, no masquerade
(so a pod reaching another node shows its own address there). Each pod has its
own MAC address, seen on the underlay switch like any other station.

Addressing: a macvlan pod is a station *on the node's L2 segment*, so its
address must belong to that segment, or nothing there would answer its ARP or
know where to send replies. Each node gets a /24 slice of its segment's upper
half (on 172.20.0.0/16: n1 172.20.128.0/24, n2 172.20.129.0/24, ...), handed
out by host-local with the segment's own prefix length and the segment's router
as gateway, as an operator carves a physical subnet for macvlan hosts. Nodes
and pods then reach each other directly on the segment, and on a routed
underlay (two /17s) through the router like any other host.

The kernel's limitation, kept on purpose: the parent NIC never passes frames to
its own macvlan children (and the reverse), so a node cannot reach its own pods
(libnetwork docs/macvlan.md: "explicitly filtered by the kernel"). Other nodes
reach them over the wire. No host-side "shim" macvlan is added.
"""
from __future__ import annotations

import ipaddress
from typing import Any

from .. import ipam
from ..node import Node
from ..spec import ClusterSpec, SpecError, ipv4_network
from ..topo import gateway, node_ips
from .base import Variant

SLICE_PREFIXLEN = 24  # one node's share of its segment


class Macvlan(Variant):
    name = "macvlan"
    wire = "plain IP with the pods' own IPs and MACs, no encapsulation"
    requires = Variant.requires + ("macvlan", "cni:macvlan", "cni:host-local", "cni:loopback")
    reaches_own_node = False
    masquerades = False  # no agent, no rule: nothing rewrites a pod's address

    @classmethod
    def check(cls, spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
        """Each node's slice of its own segment (a pod CIDR other than the segment's is refused)."""
        cls.check_mtu_options(spec)
        if spec.pod_cidr is not None:
            raise SpecError("macvlan pods take addresses of their node's underlay segment; "
                            "a pod CIDR cannot be given")
        ipv4_network(spec.underlay_cidr, "underlay CIDR")
        ranges = []
        for i, ip in enumerate(node_ips(spec.nodes, spec.underlay_cidr, spec.underlay)):
            upper = list(ip.network.subnets(prefixlen_diff=1))[1]
            if upper.prefixlen > SLICE_PREFIXLEN:
                raise SpecError(f"underlay segment {ip.network} is too small for "
                                f"/{SLICE_PREFIXLEN} macvlan slices per node")
            ranges.append(ipam.node_ranges(upper, SLICE_PREFIXLEN, i + 1)[i])
        capacity = ipam.host_local_capacity(ranges[0], None)
        if spec.pods_per_node > capacity:
            raise SpecError(f"{spec.pods_per_node} pods per node do not fit in a node's "
                            f"/{SLICE_PREFIXLEN} slice ({capacity} addresses)")
        return ranges

    def netconf(self, node: Node) -> dict[str, Any]:
        """The macvlan plugin's config: bridge mode on the node's NIC, host-local over the
        node's slice with the segment's prefix length, so every station is on-link."""
        assert node.pod_cidr is not None
        spec = self.cluster.spec
        segment = node_ips(spec.nodes, spec.underlay_cidr, spec.underlay)[node.index].network
        return {
            "cniVersion": "0.3.1",
            "name": "macvlan-underlay",
            "type": "macvlan",
            "master": node.intf,
            "mode": "bridge",
            "mtu": self.pod_mtu,  # the plugin's default (0) is the master's MTU: the same
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.cluster.state.directory("ipam", node.name)),
                "ranges": [[{"subnet": str(segment),
                             "rangeStart": str(node.pod_cidr[1]),
                             "rangeEnd": str(node.pod_cidr[-2]),
                             "gateway": str(gateway(segment))}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
