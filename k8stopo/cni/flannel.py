"""Flannel: a cni0 bridge per node, and flanneld's backends between nodes.

flanneld writes /run/flannel/subnet.env; the flannel CNI plugin turns it into
a delegated ``bridge`` + ``host-local`` config (cni0, isGateway, hairpinMode,
the backend's MTU, a route to the whole cluster CIDR). That plugin is not in
Debian's containernetworking-plugins, so we render the delegate exactly as it
would and hand it to the real bridge plugin.

Backends (as flanneld programs them, from flannel's backend/vxlan and
backend/hostgw):

* vxlan: a ``flannel.1`` VXLAN device (VNI 1, UDP 8472, learning off, MTU =
  underlay - 50) holding the node's subnet network address /32; per peer one
  route ``<podCIDR> via <peer net addr> dev flannel.1 onlink``, one permanent
  neighbour entry (peer net addr -> peer VTEP MAC) and one FDB entry (peer VTEP
  MAC -> peer node IP). No multicast, no learning.
* host-gw: per peer one route ``<podCIDR> via <peer node IP>``.
* udp (flannel's backend/udp, "use only for debugging"): a ``flannel0`` TUN
  (IFF_TUN|IFF_NO_PI, MTU = underlay - 28) holding the node's subnet network
  address /32, one route ``<cluster CIDR> dev flannel0``, and a userspace
  proxy on UDP 8285 that reads one IP packet per syscall from the TUN, looks
  the peer up by the destination's /24 and sends it as the whole UDP payload,
  and writes what it receives back into the TUN. flanneld runs that loop in C
  (proxy_amd64.c); ours is k8stopo/native/flannel_udp_proxy.c, same shape.

Every backend also gets flanneld's iptables rules (templates/flannel-iptables.rules):
traffic from pods to outside the cluster CIDR is masqueraded, pod-to-pod never is.
"""
from __future__ import annotations

import logging
from typing import Any

from ..agent import per_node
from ..node import Node
from .base import ForwardingVariant, Variant, vxlan_peers

log = logging.getLogger("k8stopo.flannel")

FLANNEL_NETWORK = "10.244.0.0/16"


class Flannel(Variant):
    """What every flannel backend shares: cni0 + subnet.env + delegated bridge config."""

    pod_cidr = FLANNEL_NETWORK
    node_prefixlen = 24
    requires = Variant.requires + ("bridge", "bridge-nf", "iptables-nat", "cni:bridge", "cni:host-local",
                                   "cni:loopback")

    def setup_node(self, node: Node) -> None:
        assert node.pod_cidr is not None
        env = (f"FLANNEL_NETWORK={self.cluster.pod_cidr}\nFLANNEL_SUBNET={node.pod_cidr[1]}/"
               f"{node.pod_cidr.prefixlen}\nFLANNEL_MTU={self.pod_mtu}\nFLANNEL_IPMASQ=true\n")
        self.cluster.state.path(node.name, "run", "flannel", "subnet.env").write_text(env)
        self.install_rules(node, "flannel-iptables.rules")

    def netconf(self, node: Node) -> dict[str, Any]:
        """The flannel CNI plugin's delegate for the bridge plugin."""
        assert node.pod_cidr is not None
        return {
            "cniVersion": "0.3.1",
            "name": "cbr0",
            "type": "bridge",
            "bridge": "cni0",
            "mtu": self.pod_mtu,
            "hairpinMode": True,
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": False,  # FLANNEL_IPMASQ=true: flanneld masquerades, not the plugin
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.cluster.state.directory("ipam", node.name)),
                "ranges": [[{"subnet": str(node.pod_cidr)}]],
                "routes": [{"dst": str(self.cluster.pod_cidr)}],
            },
        }


class FlannelVXLAN(Flannel):
    name = "flannel-vxlan"
    wire = "UDP dst 8472, VXLAN VNI 1, inner pod IPs"
    overhead = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    requires = Flannel.requires + ("vxlan",)
    DEVICE = "flannel.1"
    VNI = 1
    PORT = 8472

    def setup_node(self, node: Node) -> None:
        super().setup_node(node)
        assert node.pod_cidr is not None
        node.batch("ip", [["link", "add", self.DEVICE, "type", "vxlan", "id", self.VNI,
                           "local", node.ip, "dev", node.intf, "dstport", self.PORT, "nolearning"],
                          ["link", "set", self.DEVICE, "mtu", self.pod_mtu, "up"],
                          ["addr", "add", f"{node.pod_cidr.network_address}/32",
                           "dev", self.DEVICE]])

    def connect(self) -> None:
        # flanneld publishes its VTEP MAC as a node annotation; peers read it there.
        macs = {n.name: n.link(self.DEVICE)["address"] for n in self.cluster.nodes}
        per_node(lambda node: vxlan_peers(node, self.cluster.nodes, self.DEVICE, macs),
                 self.cluster.nodes)


class FlannelHostGW(Flannel):
    name = "flannel-host-gw"
    wire = "plain IP with pod IPs, no encapsulation"
    routed_caveat = ("host-gw needs all nodes on one L2 segment (flannel's documented "
                     "requirement): routes via nodes on the other subnet are refused by the "
                     "kernel, so their pods are unreachable")

    def connect(self) -> None:
        """A route per peer; like flanneld, log the ones the kernel refuses (a peer that is not
        on-link, across a router) and go on."""
        def program(node: Node) -> None:
            errors = node.batch("ip", [["route", "replace", p.pod_cidr, "via", p.ip, "dev",
                                        node.intf] for p in self.cluster.nodes if p is not node],
                                check=False)
            if errors:  # the run's one-line caveat says it to the user (Cluster.caveats)
                log.info("flanneld on %s: error adding routes: %s", node.name,
                         "; ".join(l for l in errors.splitlines() if l.startswith("Error")))
        per_node(program, self.cluster.nodes)


class FlannelUDP(ForwardingVariant, Flannel):
    name = "flannel-udp"
    wire = "UDP 8285, payload = the inner IP packet (pod IPs)"
    overhead = 28  # outer IPv4 20 + UDP 8 (flannel's encapOverhead)
    requires = Flannel.requires + ("tun", "native:flannel-udp-proxy")
    program = "flannel-udp-proxy"
    DEVICE = "flannel0"
    PORT = 8285

    def connect(self) -> None:
        """flanneld's udp backend per node: open the TUN and the socket (our proxy does
        both, then says ready), configure the TUN as configureIface does, and hand the
        proxy every peer's lease (subnet -> public IP:8285)."""
        def tun_ip(node: Node) -> object:
            assert node.pod_cidr is not None
            return node.pod_cidr.network_address

        self.start_forwarders({node: [
            "--tun", self.DEVICE, "--bind", f"{node.ip}:{self.PORT}", "--mtu", self.pod_mtu,
            "--tun-ip", tun_ip(node),
            *(arg for p in self.cluster.nodes if p is not node
              for arg in ("--route", f"{p.pod_cidr}={p.ip}:{self.PORT}"))]
            for node in self.cluster.nodes})
        for node in self.cluster.nodes:
            node.batch("ip", [["addr", "add", f"{tun_ip(node)}/32", "dev", self.DEVICE],
                              ["link", "set", self.DEVICE, "mtu", self.pod_mtu, "up"],
                              ["route", "add", self.cluster.pod_cidr, "dev", self.DEVICE,
                               "scope", "global"]])

