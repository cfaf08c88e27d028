"""Weave Net: one flat L2 network (10.32.0.0/12) across nodes, on a ``weave`` bridge per node.

What weave-kube (weaver + weave-npc + the weave-net CNI plugin) programs on a node,
from weaveworks/weave (net/bridge.go, net/veth.go, net/expose.go, plugin/net/cni.go,
ipam/ring/ring.go, prog/weave-kube/launch.sh, prog/weave-npc/main.go,
router/fastdp.go, router/sleeve.go), and how it is done here:

* IPAM: ``--ipalloc-range 10.32.0.0/12 --ipalloc-init consensus=N`` splits the range among
  the peers by halving it CIDR-aligned (``Ring.subdivide``): with 3 nodes n1 gets
  10.32.0.0/13, n2 10.40.0.0/14, n3 10.44.0.0/14. Each node's slice is its
  ``pod_cidr``; addresses keep the whole range's /12 prefix (one L2 domain: ARP
  crosses the overlay, there are no per-node routes).
* ``weave --local expose`` gives the bridge the first free address of the node's
  slice, as /12; it is the pods' gateway. weave-net's plugin (not in Debian) is
  rendered as the real ``bridge`` plugin with ``host-local`` on the node's slice,
  isGateway false (weave's plugin refuses isGateway), hairpin on, the bridge's MTU, and
  ``default via <bridge IP>``, exactly the routes weave's setupRoutes adds. Then
  :meth:`Weave.pod_added` does what the plugin's AttachContainer adds beyond that: the
  host veth is renamed ``vethwepl<id>``, ARP-cache sysctls on both ends, the pod's
  multicast INPUT rules (templates/weave-pod.rules), TX checksum off on the pod
  end for sleeve. (No gratuitous ARP: nothing here caches a stale MAC.)
* MTU: weave's default 1376 for fastdp. Sleeve runs with ``WEAVE_MTU=1376`` too: with no
  --mtu weave-kube's sleeve fallback gives the bridge MTU 65535 and relies on the router
  generating ICMP frag-needed per peer PMTU, which our router does not do (see docs).
* iptables (templates/weave-iptables.rules): weaver's FORWARD/INPUT hooks in
  ``--expect-npc`` mode (weave-kube's default), nat ``WEAVE`` (no-masq-local ipset,
  exposeNAT masquerade of traffic entering or leaving the range), and weave-npc's
  chains as it starts with no NetworkPolicy, plus per namespace its DefaultAllow
  ipsets and rules (templates/weave-npc-namespace.rules).

Where NetworkPolicy plugs in (the policy agent's part, as weave-npc does it): rules for
policies go into ``WEAVE-NPC-INGRESS`` and ``WEAVE-NPC-EGRESS-CUSTOM`` (marking with
``WEAVE-NPC-EGRESS-ACCEPT``); a pod selected by a policy leaves its namespace's
DefaultAllow sets (:func:`default_allow_sets` gives their names, on every node); the
first egress policy appends to ``WEAVE-NPC-EGRESS`` the NFLOG and
``-m mark ! --mark 0x40000/0x40000 -j DROP`` rules (npc/controller.go).

Datapaths between nodes:

* fastdp: weave's kernel datapath is an Open vSwitch datapath with one vxlan vport on UDP
  6784, whose flows (set up by the router on a miss) set tunnel id = srcShortID |
  dstShortID << 12, TTL 64, DF, UDP checksum 0. This kernel has no OPENVSWITCH, so
  kernel VXLAN devices on the weave bridge stand in: one per peer (``vx6784-<peer>``)
  receiving that peer's VNI and sending, through an all-zero FDB entry, with ours, so
  the VNI on the wire is weave's; TTL 64, df set, noudpcsum. The bridge learns MACs as
  weave's router does and floods broadcasts to every peer; the VXLAN ports are
  ``isolated`` so a frame from one peer is never sent on to another (weave relays only
  by topology; in a full mesh nothing is relayed). Missing: the veth hop
  (vethwe-bridge/vethwe-datapath) into the OVS datapath and the first-packet upcall.
* sleeve: weave's own UDP encapsulation on port 6783, done in user space by the router
  (pcap on ``vethwe-pcap``, whose peer ``vethwe-bridge`` is in the bridge). Ours is
  k8stopo/native/weave_sleeve.c: AF_PACKET on vethwe-pcap, sleeve framing (sender
  peer name, then per frame src and dst peer names, length, Ethernet frame), MAC
  learning, broadcast to every peer, nothing received from a peer is sent on to another.
"""
from __future__ import annotations

import hashlib
import ipaddress
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from ..agent import per_node
from ..node import Node, Pod
from ..spec import ClusterSpec, SpecError
from .base import ForwardingVariant, Variant

if TYPE_CHECKING:
    from ..context import ClusterContext

WEAVE_RANGE = "10.32.0.0/12"
BRIDGE = "weave"
DEFAULT_MTU = 1376  # net/bridge.go fastdpImpl.init, "GCE ... 1460 ... ESP overhead"
NO_MASQ_LOCAL = "weaver-no-masq-local"
# weave-npc's ipset name alphabet (npc/shortname.go)
SHORT_NAME_SYMBOLS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                      "(){}[]+=_$%^!*|/?.;:@#~")


def subdivide(network: ipaddress.IPv4Network, peers: int) -> list[ipaddress.IPv4Network]:
    """weave IPAM's consensus split (ipam/ring/ring.go subdivide): halve the range, first half
    to the first half of the peers, recursively; every share stays CIDR-aligned."""
    def split(start: int, size: int, n: int) -> list[ipaddress.IPv4Network]:
        if n == 1:
            return [ipaddress.IPv4Network((start, 32 - (size.bit_length() - 1)))]
        half = size // 2
        return split(start, half, n // 2) + split(start + half, half, n - n // 2)

    if peers > network.num_addresses:
        raise SpecError(f"{network} cannot be split among {peers} weave peers")
    return split(int(network.network_address), network.num_addresses, peers)


def short_name(text: str) -> str:
    """weave-npc's shortName: sha1, written in base 85 with its alphabet, least digit first."""
    value = int.from_bytes(hashlib.sha1(text.encode()).digest(), "big")
    digits = []
    while value > 0:
        value, digit = divmod(value, len(SHORT_NAME_SYMBOLS))
        digits.append(SHORT_NAME_SYMBOLS[digit])
    return "".join(digits)


def default_allow_sets(namespace: str) -> tuple[str, str]:
    """weave-npc's (ingress, egress) DefaultAllow ipsets of a namespace (npc/namespace.go newNS)."""
    return ("weave-" + short_name(f"ingress-default-allow:{namespace}"),
            "weave-" + short_name(f"egress-default-allow:{namespace}"))


def peer_name(node: Node) -> str:
    """A weave peer name (6 bytes written as a MAC; also the bridge's MAC) for a node."""
    raw = bytearray(hashlib.sha1(f"weave-peer:{node.name}".encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in raw)


class Weave(Variant):
    """The weave bridge, weave IPAM and attach semantics, weave's and weave-npc's iptables."""

    pod_cidr = WEAVE_RANGE
    enforces_policy = True  # weave-npc; its no-policy state is here, policies are the policy agent's
    requires = Variant.requires + ("bridge", "bridge-nf", "iptables-nat", "ipset", "cni:bridge",
                                   "cni:host-local", "cni:loopback")
    #: the bridge port through which frames reach the other nodes (weave-npc's --bridge-port-name)
    overlay_port: ClassVar[str] = "vethwe-bridge"
    #: weave's CNI plugin switches TX checksum offload off on the pod end unless fastdp
    pod_tx_off: ClassVar[bool] = False

    def __init__(self, cluster: "ClusterContext") -> None:
        super().__init__(cluster)
        self.namespaces: set[str] = set()
        # pods of different nodes are attached at once; the DefaultAllow sets span all nodes
        self._npc_lock = threading.Lock()

    @classmethod
    def check(cls, spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
        if spec.node_block is not None:
            raise SpecError("weave's IPAM splits its range among the nodes itself: "
                            "a per-node block size cannot be given")
        if spec.mtu < DEFAULT_MTU + cls.overhead:
            raise SpecError(f"weave's MTU {DEFAULT_MTU} plus {cls.name}'s {cls.overhead}-byte "
                            f"encapsulation does not fit in an underlay MTU of {spec.mtu}")
        return super().check(spec)

    @classmethod
    def split(cls, pod_cidr: ipaddress.IPv4Network,
              spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
        return subdivide(pod_cidr, spec.nodes)

    @classmethod
    def capacity(cls, block: ipaddress.IPv4Network) -> int:
        """The share's addresses less the bridge's and, at worst, the range's two ends."""
        return max(block.num_addresses - 3, 0)

    @staticmethod
    def _usable(block: ipaddress.IPv4Network, whole: ipaddress.IPv4Network
                ) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """First and last address weave IPAM hands out in ``block``: all of them except the
        whole range's network and broadcast addresses."""
        first, last = block.network_address, block.broadcast_address
        return (first + 1 if first == whole.network_address else first,
                last - 1 if last == whole.broadcast_address else last)

    @property
    def pod_mtu(self) -> int:
        return DEFAULT_MTU

    def bridge_ip(self, node: Node) -> ipaddress.IPv4Interface:
        """What ``weave expose`` puts on the bridge: the node's first address, range prefix."""
        assert node.pod_cidr is not None and self.cluster.pod_cidr is not None
        first = self._usable(node.pod_cidr, self.cluster.pod_cidr)[0]
        return ipaddress.IPv4Interface(f"{first}/{self.cluster.pod_cidr.prefixlen}")

    # -- the node agent -----------------------------------------------------------------
    def setup_node(self, node: Node) -> None:
        """weave-kube's init.sh (bridge netfilter on), then weaver's EnsureBridge,
        ConfigureIPTables and expose."""
        assert self.cluster.pod_cidr is not None
        node.sysctl("net.bridge.bridge-nf-call-iptables", 1)
        node.batch("ip", [["link", "add", BRIDGE, "type", "bridge"],
                          ["link", "set", BRIDGE, "address", peer_name(node),
                           "mtu", self.pod_mtu]])
        self.attach_overlay(node)
        for key, value in (("base_reachable_time", 5), ("delay_first_probe_time", 2),
                           ("ucast_solicit", 1)):  # net/arp.go configureARPCache
            node.sysctl(f"net.ipv4.neigh.{BRIDGE}.{key}", value)
        node.batch("ip", [["link", "set", BRIDGE, "up"]])
        node.run(["ipset", "create", NO_MASQ_LOCAL, "hash:net"])
        node.run(["ipset", "add", NO_MASQ_LOCAL, node.pod_cidr])
        self.install_rules(node, "weave-iptables.rules", weave_range=self.cluster.pod_cidr,
                           overlay_port=self.overlay_port)
        node.batch("ip", [["addr", "add", self.bridge_ip(node), "dev", BRIDGE]])

    def attach_overlay(self, node: Node) -> None:
        """Create what links the bridge to the other nodes (before the bridge is up)."""
        raise NotImplementedError

    def netconf(self, node: Node) -> dict[str, Any]:
        """weave-net's plugin config, rendered for the real bridge plugin (see module doc)."""
        assert node.pod_cidr is not None and self.cluster.pod_cidr is not None
        gateway = self.bridge_ip(node).ip
        last = self._usable(node.pod_cidr, self.cluster.pod_cidr)[1]
        return {
            "cniVersion": "0.3.1",
            "name": "weave",
            "type": "bridge",
            "bridge": BRIDGE,
            "mtu": self.pod_mtu,
            "hairpinMode": True,
            "isGateway": False,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.cluster.state.directory("ipam", node.name)),
                "ranges": [[{"subnet": str(self.cluster.pod_cidr), "rangeStart": str(gateway + 1),
                             "rangeEnd": str(last), "gateway": str(gateway)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }

    def pod_added(self, pod: Pod) -> None:
        """weave's AttachContainer beyond the bridge plugin, then weave-npc's pod bookkeeping."""
        node = pod.node
        assert node is not None
        host_end = next(i["name"] for i in pod.cni_result["interfaces"]
                        if not i.get("sandbox") and i["name"] != BRIDGE)
        cid = hashlib.sha1(f"{pod.namespace}/{pod.name}".encode()).hexdigest()[:7]
        node.batch("ip", [["link", "set", host_end, "down"],
                          ["link", "set", host_end, "name", f"vethwepl{cid}", "up"]])
        for key, value in (("base_reachable_time", 5), ("delay_first_probe_time", 2),
                           ("ucast_solicit", 1)):
            pod.sysctl(f"net.ipv4.neigh.{pod.ifname}.{key}", value)
        self.install_rules(pod, "weave-pod.rules", ifname=pod.ifname,
                           subnet=self.cluster.pod_cidr)
        if self.pod_tx_off:
            pod.run(["ethtool", "-K", pod.ifname, "tx", "off"])
        self._default_allow(pod)

    def _default_allow(self, pod: Pod) -> None:
        """weave-npc with no NetworkPolicy: the pod is in its namespace's DefaultAllow sets on
        every node (the namespace's sets and rules are made with its first pod)."""
        ingress, egress = default_allow_sets(pod.namespace)
        with self._npc_lock:
            for node in self.cluster.nodes:
                if pod.namespace not in self.namespaces:
                    node.run(["ipset", "restore"],
                             input=f"create {ingress} hash:ip\ncreate {egress} hash:ip\n")
                    self.install_rules(node, "weave-npc-namespace.rules",
                                       namespace=pod.namespace, ingress_set=ingress,
                                       egress_set=egress)
                node.run(["ipset", "restore"],
                         input=f"add {ingress} {pod.ip}\nadd {egress} {pod.ip}\n")
            self.namespaces.add(pod.namespace)


class WeaveFastDP(Weave):
    name = "weave-fastdp"
    wire = "VXLAN on UDP 6784 (VNI = src|dst<<12 short peer IDs), inner pod MACs and IPs"
    overhead = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    requires = Weave.requires + ("vxlan",)
    overlay_port = "vx6784-+"  # the stand-in's per-peer VXLAN ports (iptables wildcard)
    PORT = 6784  # mainVxlanUDPPort = router port 6783 + 1

    def attach_overlay(self, node: Node) -> None:
        """Nothing before the peers are known; see :meth:`connect`."""

    @staticmethod
    def vni(src: Node, dst: Node) -> int:
        """router/fastdp.go tunnelIDFor: srcShortID | dstShortID << 12 (12-bit short IDs)."""
        return (src.index + 1) | (dst.index + 1) << 12

    def connect(self) -> None:
        per_node(self._connect, self.cluster.nodes)

    def _connect(self, node: Node) -> None:
        """One VXLAN port per peer in the bridge, isolated from the others (nothing heard
        from one peer is sent on to another), its tunnel ID and destination fixed."""
        peers = [(f"vx{self.PORT}-{p.name}", p) for p in self.cluster.nodes if p is not node]
        node.batch("ip", [c for dev, peer in peers for c in (
            ["link", "add", dev, "type", "vxlan", "id", self.vni(peer, node), "local", node.ip,
             "dev", node.intf, "dstport", self.PORT, "ttl", 64, "df", "set", "noudpcsum",
             "nolearning"],
            ["link", "set", dev, "mtu", self.pod_mtu, "master", BRIDGE, "up"])])
        node.batch("bridge", [c for dev, peer in peers for c in (
            ["link", "set", "dev", dev, "isolated", "on"],
            ["fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", peer.ip,
             "vni", self.vni(node, peer), "self", "permanent"])])


class WeaveSleeve(ForwardingVariant, Weave):
    name = "weave-sleeve"
    wire = "UDP 6783: sender peer name, then per frame src/dst peer names, length, Ethernet frame"
    # outer IPv4 + UDP 28, sender name 6, frame header 6 + 6 + 2, inner Ethernet 14
    overhead = 62  # router/sleeve.go overheadDF
    requires = Weave.requires + ("ethtool", "native:weave-sleeve")
    pod_tx_off = True
    program = "weave-sleeve"
    PORT = 6783
    CAPTURE = "vethwe-pcap"

    def attach_overlay(self, node: Node) -> None:
        """bridgeImpl.init: vethwe-bridge in the bridge, vethwe-pcap for the router, TX off."""
        node.batch("ip", [["link", "add", self.overlay_port, "mtu", self.pod_mtu, "type", "veth",
                           "peer", "name", self.CAPTURE, "mtu", self.pod_mtu],
                          ["link", "set", self.overlay_port, "master", BRIDGE, "up"],
                          ["link", "set", self.CAPTURE, "up"]])
        node.run(["ethtool", "-K", BRIDGE, "tx", "off"])

    def connect(self) -> None:
        self.start_forwarders({node: [
            "--capture", self.CAPTURE, "--bind", f"{node.ip}:{self.PORT}",
            "--name", peer_name(node), "--mtu", self.pod_mtu, "--pmtu", self.cluster.spec.mtu,
            *(arg for p in self.cluster.nodes if p is not node
              for arg in ("--peer", f"{peer_name(p)}={p.ip}:{self.PORT}"))]
            for node in self.cluster.nodes})

