"""Docker's own networks: the default bridge, and libnetwork's overlay driver.

docker-bridge (what Kubernetes' flat pod network replaced). Every node has
docker0 with 172.17.0.1/16, the same range everywhere, so a pod address means
nothing off its node: pods leave masqueraded to the node's IP and are reached
from other nodes only through port mappings on the node's IP. Here pods are
attached by the real ``bridge`` plugin (bridge docker0, gateway, host-local
over 172.17.0.0/16) chained with the real ``portmap`` plugin, which publishes a
pod's hostPort with DNAT (CNI-HOSTPORT-DNAT), as kubelet does for ``hostPort``
and dockerd does for ``-p``. dockerd's own rules for docker0 are installed as
libnetwork programs them (templates/docker-iptables.rules: DOCKER chains,
isolation chains, ``POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE``),
so the plugin's ipMasq stays off. The nodes' FORWARD policy stays ACCEPT:
dockerd only sets it to DROP when it had to switch ip_forward on itself, and a
Kubernetes node already has it on.

docker-overlay (libnetwork drivers/overlay, swarm mode). Per node, one
namespace for the network (libnetwork's ``1-<netid>`` sandbox; here a named
netns ``<run prefix>-ov-<node>`` listed in the run's manifest) holding ``br0``
with the network's gateway address and ``vxlan0`` (VNI 4096, the first ID the
swarm allocator hands out; UDP 4789; learning, proxy, l2miss and l3miss on, as
``createVxlan`` sets them; MTU 1500 - 50). vxlan0 is created in the node's
namespace and then moved in, as libnetwork does, so its UDP socket and the
outer packets stay in the node's stack. Containers get a veth (MTU 1450) whose
other end is enslaved to br0, a MAC derived from their IP (02:42 + the four
address bytes, libnetwork's GenerateMACFromIP), and one address of the
network's single subnet (10.0.0.0/24, allocated cluster-wide by the swarm
manager, not per node). For every remote container, peerdb programs
``neigh <ip> lladdr <mac> dev vxlan0 permanent`` and ``fdb <mac> dev vxlan0 dst
<node ip> self permanent`` in the network's namespace. Docker uses no CNI
plugin: the variant attaches pods itself. Containers also get ``eth1`` on the
node's ``docker_gwbridge`` (172.18.0.0/16, inter-container traffic dropped,
masqueraded out), their default route, as Docker gives every overlay
container; so pods reach nodes masqueraded, but nodes have no route into the
overlay (it lives only in the network's namespaces). Not built: the swarm
ingress/load-balancer endpoints and encrypted overlays (ESP is absent from this
kernel; see ``k8stopo doctor``).
"""
from __future__ import annotations

import ipaddress
import threading
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .. import ipam, netlink
from ..node import Node, Pod, delete_links
from ..spec import ClusterSpec, SpecError, ipv4_network
from .base import Variant

if TYPE_CHECKING:
    from ..context import ClusterContext

DOCKER0 = "docker0"
DOCKER0_CIDR = "172.17.0.0/16"
# Each node's first pod publishes its iperf3 port on the node, tcp and udp
# (docker run -p 5202:5201): the pod-to-hostport scenario dials <node B>:5202.
HOST_PORT, CONTAINER_PORT = 5202, 5201
GWBRIDGE = "docker_gwbridge"
GWBRIDGE_CIDR = ipaddress.IPv4Network("172.18.0.0/16")


def docker_mac(ip: ipaddress.IPv4Address) -> str:
    """libnetwork's GenerateMACFromIP: 02:42 followed by the IPv4 address bytes."""
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *ip.packed))


class SharedRange(Variant):
    """Docker's networks give every node the same range (docker0's, or the overlay's
    one subnet), where Kubernetes gives each node its own."""

    @classmethod
    def check(cls, spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
        cls.check_mtu_options(spec)
        net = ipv4_network(spec.pod_cidr or cls.pod_cidr, "pod CIDR")
        if net.overlaps(ipv4_network(spec.underlay_cidr, "underlay CIDR")):
            raise SpecError(f"pod CIDR {net} overlaps the underlay {spec.underlay_cidr}")
        capacity = ipam.host_local_capacity(net, net[1])
        wanted = cls.pods_sharing_the_range(spec)
        if wanted > capacity:
            raise SpecError(f"{wanted} pods do not fit in {cls.name}'s {net} ({capacity} addresses)")
        return [net] * spec.nodes

    @classmethod
    def pods_sharing_the_range(cls, spec: ClusterSpec) -> int:
        return spec.pods_per_node


class DockerBridge(SharedRange):
    name = "docker-bridge"
    wire = "node IPs only (masqueraded, or DNAT to a hostPort); no pod IP crosses the wire"
    pod_cidr = DOCKER0_CIDR
    requires = Variant.requires + ("bridge", "iptables-nat", "cni:bridge", "cni:host-local",
                                   "cni:portmap", "cni:loopback")
    pod_ip_routable = False

    def setup_node(self, node: Node) -> None:
        """What dockerd does at start: docker0 with the gateway address, and its rules."""
        assert node.pod_cidr is not None
        node.batch("ip", [["link", "add", DOCKER0, "type", "bridge"],
                          ["addr", "add", f"{node.pod_cidr[1]}/{node.pod_cidr.prefixlen}",
                           "dev", DOCKER0],
                          ["link", "set", DOCKER0, "up"]])
        self.install_rules(node, "docker-iptables.rules", bridge=DOCKER0,
                           bridge_subnet=node.pod_cidr, icc=True)

    def netconf(self, node: Node) -> dict[str, Any]:
        """bridge on docker0 then portmap, as one network configuration list."""
        assert node.pod_cidr is not None
        return {
            "cniVersion": "0.4.0",
            "name": "docker-bridge",
            "plugins": [
                {"type": "bridge", "bridge": DOCKER0, "isGateway": True,
                 "isDefaultGateway": True, "ipMasq": False,  # dockerd's own rule masquerades
                 "hairpinMode": False, "mtu": self.pod_mtu,
                 "ipam": {"type": "host-local",
                          "dataDir": str(self.cluster.state.directory("ipam", node.name)),
                          "ranges": [[{"subnet": str(node.pod_cidr),
                                       "gateway": str(node.pod_cidr[1])}]]}},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        }

    def runtime_config(self, node: Node) -> dict[str, Any]:
        """The node's first pod publishes CONTAINER_PORT on HOST_PORT, tcp and udp."""
        return {"portMappings": [] if node.pods else [
            {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": proto}
            for proto in ("tcp", "udp")]}


class DockerOverlay(SharedRange):
    name = "docker-overlay"
    wire = "UDP dst 4789, VXLAN VNI 4096, inner container IPs and MACs"
    pod_cidr = "10.0.0.0/24"  # swarm's default address pool 10.0.0.0/8, a /24 per network
    overhead = 50  # libnetwork's vxlanEncap
    requires = Variant.requires + ("bridge", "vxlan", "iptables-nat")
    nodes_reach_pods = False
    VNI = 4096  # ovmanager's vxlanIDStart
    PORT = 4789

    def __init__(self, cluster: "ClusterContext") -> None:
        super().__init__(cluster)
        assert cluster.pod_cidr is not None
        self._free = iter(cluster.pod_cidr.hosts())
        next(self._free)  # .1 is the network's gateway, on br0
        self._gw_free: dict[str, Iterator[ipaddress.IPv4Address]] = {}
        # pods of different nodes are attached at once: the swarm's one address pool, and
        # peerdb programming every node, are shared between them
        self._lock = threading.Lock()

    @classmethod
    def pods_sharing_the_range(cls, spec: ClusterSpec) -> int:
        return spec.pods_per_node * spec.nodes  # one subnet for the whole network

    def netns(self, node: Node) -> str:
        """The network's sandbox namespace on ``node``."""
        return f"{self.cluster.state.prefix}-ov-{node.name}"

    def _ov(self, node: Node, *commands: list[object], tool: str = "ip") -> None:
        """``ip``/``bridge`` commands inside the network's namespace on ``node``."""
        netlink.at(self.netns(node), self.cluster.state.prefix).batch(tool, commands)

    def setup_node(self, node: Node) -> None:
        """libnetwork's setupSubnetSandbox, then the docker_gwbridge network."""
        assert node.pod_cidr is not None
        ns = self.netns(node)
        self.cluster.state.track_netns(ns)  # before creating it: a crash still gets it removed
        node.run(["ip", "netns", "add", ns])
        gw = f"{node.pod_cidr[1]}/{node.pod_cidr.prefixlen}"
        temp = f"vx-{self.VNI:06x}-{self.cluster.state.prefix[:5]}"  # createVxlan's name
        node.batch("ip", [["link", "add", temp, "mtu", self.pod_mtu, "type", "vxlan", "id",
                           self.VNI, "dstport", self.PORT, "learning", "proxy", "l2miss", "l3miss"],
                          ["link", "set", temp, "netns", ns]])
        self._ov(node, ["link", "add", "br0", "type", "bridge"], ["addr", "add", gw, "dev", "br0"],
                 ["link", "set", temp, "name", "vxlan0"], ["link", "set", "vxlan0", "master", "br0"],
                 ["link", "set", "lo", "up"], ["link", "set", "br0", "up"],
                 ["link", "set", "vxlan0", "up"])
        node.batch("ip", [["link", "add", GWBRIDGE, "type", "bridge"],
                          ["addr", "add", f"{GWBRIDGE_CIDR[1]}/{GWBRIDGE_CIDR.prefixlen}",
                           "dev", GWBRIDGE],
                          ["link", "set", GWBRIDGE, "up"]])
        self.install_rules(node, "docker-iptables.rules", bridge=GWBRIDGE,
                           bridge_subnet=GWBRIDGE_CIDR, icc=False)
        hosts = GWBRIDGE_CIDR.hosts()
        next(hosts)  # .1 is docker_gwbridge's own
        self._gw_free[node.name] = hosts

    def attach_pod(self, node: Node, holder: int | None, name: str, namespace: str,
                   labels: dict[str, str]) -> Pod:
        """What libnetwork's Join does for a container on the overlay and docker_gwbridge."""
        assert node.pod_cidr is not None and holder is not None
        with self._lock:
            ip = next(self._free)
        gw_ip = next(self._gw_free[node.name])
        slot = len(node.pods)
        ov_end, gw_end = f"ov{slot}-{holder}", f"gw{slot}-{holder}"  # node-side names
        pairs: list[Sequence[object]] = [
            c for end in (ov_end, gw_end)
            for c in (["link", "add", end, "type", "veth", "peer", "name", f"c{end}"],
                      ["link", "set", f"c{end}", "netns", holder])]
        node.batch("ip", [*pairs,
                          ["link", "set", ov_end, "mtu", self.pod_mtu, "netns", self.netns(node)],
                          ["link", "set", gw_end, "master", GWBRIDGE, "up"]])
        self._ov(node, ["link", "set", ov_end, "name", f"veth{slot}"],
                 ["link", "set", f"veth{slot}", "master", "br0", "up"])
        pod = Pod(name=name, ip=ip, pid=holder, state=node.state, node=node,
                  mtu=self.pod_mtu, namespace=namespace, labels=dict(labels))
        pod.batch("ip", [
            ["link", "set", "lo", "up"],
            ["link", "set", f"c{ov_end}", "name", "eth0"],
            ["link", "set", "eth0", "mtu", self.pod_mtu, "address", docker_mac(ip), "up"],
            ["addr", "add", f"{ip}/{node.pod_cidr.prefixlen}", "dev", "eth0"],
            ["link", "set", f"c{gw_end}", "name", "eth1"],
            ["link", "set", "eth1", "address", docker_mac(gw_ip), "up"],
            ["addr", "add", f"{gw_ip}/{GWBRIDGE_CIDR.prefixlen}", "dev", "eth1"],
            ["route", "add", "default", "via", GWBRIDGE_CIDR[1], "dev", "eth1"]])
        return pod

    def pod_added(self, pod: Pod) -> None:
        """peerdb: every other node learns the new container (pods are added after every
        node's sandbox exists, so each node hears of every remote container this way)."""
        assert pod.node is not None
        with self._lock:
            for other in self.cluster.nodes:
                if other is not pod.node:
                    self._peer_add(other, pod)

    def _peer_add(self, node: Node, remote: Pod) -> None:
        """libnetwork's peerAdd for a remote endpoint: static neighbour and FDB entries."""
        assert remote.node is not None
        mac = docker_mac(remote.ip)
        self._ov(node, ["neigh", "replace", remote.ip, "lladdr", mac, "dev", "vxlan0",
                        "nud", "permanent"])
        self._ov(node, ["fdb", "replace", mac, "dev", "vxlan0", "dst", remote.node.ip, "self",
                        "permanent"], tool="bridge")

    def detach_pod(self, pod: Pod) -> None:
        """libnetwork's Leave: delete the container's veth pairs (the peers' entries go with
        the network's namespaces)."""
        assert pod.node is not None
        slot = pod.node.pods.index(pod)
        pod.node.batch("ip", [["link", "del", f"gw{slot}-{pod.pid}"]], check=False)
        self._ov(pod.node, ["link", "del", f"veth{slot}"])

    def detach_all(self, node: Node) -> None:
        """Every container's pairs at once: docker_gwbridge's in the node's namespace, the
        overlay's in the network's (the namespace itself goes with the run's manifest)."""
        super().detach_all(node)
        links = netlink.at(self.netns(node), self.cluster.state.prefix).links("veth")
        delete_links(self.netns(node), [link["ifname"] for link in links])
