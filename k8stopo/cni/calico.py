"""Calico: routed pods (no bridge), Felix's chains, and BIRD, IP-in-IP or VXLAN between nodes.

What calico-node does on each node, and how this emulation does it:

* CNI: the real ``ptp`` plugin with ``host-local`` IPAM on the node's /26 block
  (Calico supports host-local IPAM; ptp insists on a gateway inside the block,
  so host-local keeps .1 back); then, as the calico plugin and Felix do, the
  host end is renamed ``cali`` + 11 hex digits of
  sha1("<namespace>.<pod>"), gets MAC ee:ee:ee:ee:ee:ee, no address, proxy-ARP on
  (so it answers for 169.254.1.1), a ``<pod>/32 dev caliX scope link`` route;
  the pod keeps its address as a /32 with ``default via 169.254.1.1 dev eth0``.
* Felix's iptables chains (:mod:`.felix`), with no NetworkPolicy: raw anti-spoofing
  (strict rpfilter on every pod packet), mangle, filter dispatch to per-workload
  ``cali-tw-``/``cali-fw-`` chains with conntrack rules and the namespace's allow-all
  profile, and natOutgoing for the pool.
* calico-bgp / calico-ipip: BIRD 2 per node in the node's namespace, its own control
  socket and log in the run's directory, config rendered from templates/bird.conf
  (Calico's confd templates): a static blackhole for the node's block, exported over
  iBGP in AS 64512, as a node-to-node mesh or through route reflectors (``--bgp rr``).
* calico-ipip: as the BIRD variant, plus ``tunl0`` (MTU underlay - 20, the node's tunnel
  address from its block) and BIRD installing peers' blocks ``via <peer> dev tunl0
  onlink`` (Calico's ``krt_tunnel = "tunl0"``; BIRD 2 spells it ``ifname``/``onlink``/``gw``).
  With ``--ipip-mode cross-subnet``, peers on the node's own subnet are reached directly.
  Where the kernel has no ipip module, tunl0 is a stand-in device and a tc eBPF program
  (k8stopo/bpf/calico_ipip.c) pushes and pops the outer header; see :class:`CalicoIPIP`.
* calico-vxlan: no BIRD (calico-node's rc.local: no BGP daemon with the vxlan backend);
  Felix's ``vxlan.calico`` (VNI 4096, UDP 4789, MTU underlay - 50) and, per peer, the ARP,
  FDB and onlink route of felix/dataplane/linux/vxlan_mgr.go; the outer UDP is NOTRACK.
* On the routed underlay the fabric must know the blocks (Calico's "peer with
  your top-of-rack router" model): every node also peers with its subnet's
  router address (a node-specific BGPPeer), and the router ``r1`` runs BIRD as
  an iBGP route reflector (templates/bird-tor.conf) that installs each block
  via its node. Without it, the router would drop pod traffic between subnets.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

from .. import proc
from ..agent import per_node
from ..daemon import Daemon, Daemons, per_daemon, socket_answers
from ..errors import NotReady
from ..node import Endpoint, Node, Pod
from ..templates import render
from . import felix
from .base import Variant, vxlan_peers

if TYPE_CHECKING:
    from ..context import ClusterContext

log = logging.getLogger("k8stopo.calico")

CALICO_POOL = "192.168.0.0/16"
GATEWAY = ipaddress.IPv4Address("169.254.1.1")
RR_CLUSTER_ID = "244.0.0.1"  # Calico docs' example routeReflectorClusterID
BPF_SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "calico_ipip.c"
#: bytes of BIRD's netlink receive buffer (its kernel protocol's ``netlink rx buffer``): at
#: the default, a node importing a thousand peers' routes at once overflows it, and BIRD
#: logs "Kernel dropped some netlink messages" and rescans its kernel table
NETLINK_RX_BUFFER = 16 * 1024 * 1024
#: BIRDs started (and waited for) per batch after the route reflectors
START_BATCH = 64
RTPROT_BIRD = 12  # /etc/iproute2/rt_protos: the routes BIRD installs


def workload_iface(pod: Pod) -> str:
    """The host-side veth of a pod, named from its Kubernetes namespace and name."""
    return cali_name(pod.namespace, pod.k8s_name)


def cali_name(namespace: str, pod: str) -> str:
    """Calico's host-side veth name for a workload (libcalico-go's VethNameForWorkload)."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def tunnel_address(node: Node) -> ipaddress.IPv4Address:
    """The node's tunnel address (tunl0 / vxlan.calico): Calico IPAM gives the tunnel the
    first address of the node's block."""
    assert node.pod_cidr is not None
    return node.pod_cidr.network_address


class Calico(Variant):
    """Calico's routed pod plumbing and Felix's chains; subclasses add BIRD and tunnels."""

    pod_cidr = CALICO_POOL
    node_prefixlen = 26
    requires = Variant.requires + ("iptables-nat", "cni:ptp", "cni:host-local", "cni:loopback",
                                   "ipset", "rpfilter")
    enforces_policy = True  # Felix: k8stopo.policy.felix
    #: the tunnel device Felix's nat rules name (None: no encapsulation)
    tunnel_device: ClassVar[str | None] = None

    def __init__(self, cluster: "ClusterContext") -> None:
        super().__init__(cluster)
        self._pending: dict[str, list[Pod]] = {}  # per node, while its pods are attached

    def netconf(self, node: Node) -> dict[str, Any]:
        return {
            "cniVersion": "0.3.1",
            "name": "k8s-pod-network",
            "type": "ptp",
            "mtu": self.pod_mtu,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.cluster.state.directory("ipam", node.name)),
                "ranges": [[{"subnet": str(node.pod_cidr)}]],
            },
        }

    def setup_node(self, node: Node) -> None:
        """Felix's static chains (and the host ipsets they match) before any pod exists."""
        hosts = felix.host_ipset(self.tunnel_device)
        if hosts is not None:
            felix.ipsets(node, {hosts: [n.ip for n in self.cluster.nodes]})
        felix.restore(node, felix.static_rules(node, self.cluster.pod_cidr, self.tunnel_device),
                      record="felix-static.rules")

    def pod_added(self, pod: Pod) -> None:
        """The calico plugin's and Felix's part, after ptp made the veth pair."""
        node = pod.node
        assert node is not None
        host_end = next(i["name"] for i in pod.cni_result["interfaces"] if not i.get("sandbox"))
        cali = workload_iface(pod)
        # One process per namespace and step (a thousand pods are thousands of forks).
        node.batch("ip", [["link", "set", host_end, "down"],
                          ["link", "set", host_end, "name", cali, "address", "ee:ee:ee:ee:ee:ee"],
                          ["addr", "flush", "dev", cali],
                          ["link", "set", cali, "up"],
                          ["route", "replace", f"{pod.ip}/32", "dev", cali, "scope", "link"]])
        node.sysctl(f"net.ipv4.conf.{cali}.proxy_arp", 1)
        node.sysctl(f"net.ipv4.neigh.{cali}.proxy_delay", 0)
        pod.batch("ip", [["addr", "flush", "dev", pod.ifname],  # also drops ptp's routes
                         ["addr", "add", f"{pod.ip}/32", "dev", pod.ifname],
                         ["route", "replace", GATEWAY, "dev", pod.ifname, "scope", "link"],
                         ["route", "replace", "default", "via", GATEWAY, "dev", pod.ifname]])
        pending = self._pending.get(node.name)
        if pending is None:
            self.program_workload(pod)
        else:
            pending.append(pod)

    @contextlib.contextmanager
    def attaching(self, node: Node) -> Iterator[None]:
        """Felix's apply loop: the endpoints of the pods that arrived while it was busy are
        programmed in one iptables-restore (felix/iptables/table.go Apply), not one each."""
        self._pending[node.name] = []
        try:
            yield
            arrived = self._pending[node.name]
        finally:
            del self._pending[node.name]
        if arrived:
            self._program(node, [line for pod in arrived
                                 for line in felix.workload_rules(workload_iface(pod), pod)])

    def program_workload(self, pod: Pod, ingress_policies: Sequence[str] = (),
                         egress_policies: Sequence[str] = (), policy_lines: Sequence[str] = ()
                         ) -> None:
        """Felix's endpoint manager: the pod's chains and the node's dispatch, one batch.

        A NetworkPolicy agent re-programs a pod with the names of the policy chains that
        apply to it (see :func:`felix.workload_rules`) and, in ``policy_lines``, the filter
        lines declaring those chains, loaded first in the same atomic batch."""
        node = pod.node
        assert node is not None
        self._program(node, [*policy_lines, *felix.workload_rules(
            workload_iface(pod), pod, ingress_policies, egress_policies)])

    @staticmethod
    def _program(node: Node, lines: Sequence[str]) -> None:
        """Workload chains and the node's dispatch chains over all its pods, one batch."""
        ifaces = [workload_iface(p) for p in node.pods if not p.host_network]
        felix.restore(node, felix.table("filter", [*lines, *felix.dispatch_rules(ifaces)]))


@dataclass(frozen=True)
class Peering:
    """One BGP session of a node, as confd renders it."""

    name: str  # Mesh_<ip> (node-to-node mesh) or Node_<ip> (BGPPeer, e.g. to a reflector)
    ip: str
    passive: bool = False  # mesh: only the side with the lower IP (as strings) dials
    rr_client: bool = False  # on a reflector: the peer is its client


class Bird(Daemon):
    """calico-node's BIRD 2 in one node: config from templates/bird.conf, checked by
    ``bird -p``, in the foreground with its own control socket; ready once that socket
    greets; killed with its cluster (:meth:`CalicoBird.stop_bird` stops one gracefully)."""

    NAME = "bird"
    TEMPLATE = "bird.conf"
    KILL_AT_TEARDOWN = True
    #: a BIRD busy with a thousand peers' routes may take seconds to accept its socket
    READY_TIMEOUT = 60.0
    #: what BIRD logs when its netlink socket overflowed: it then rescans the kernel table
    NETLINK_DROP = "Kernel dropped some netlink messages"

    @property
    def ctl(self) -> Path:
        return self.conf.with_suffix(".ctl")

    def check_argv(self) -> list[object]:
        return ["bird", "-p", "-c", self.conf]

    def argv(self) -> list[object]:
        return ["bird", "-f", "-c", self.conf, "-s", self.ctl]

    def ready(self) -> bool:
        return socket_answers(self.ctl, b"0001 BIRD")

    def netlink_dropped(self) -> bool:
        """Whether the kernel dropped netlink messages meant for it (read from its log)."""
        return self.NETLINK_DROP in self.read_log()


class TorBird(Bird):
    """The routed underlay's router's BIRD (templates/bird-tor.conf)."""

    TEMPLATE = "bird-tor.conf"


class CalicoBird(Calico):
    """Calico with calico-node's BIRD: the mesh or route reflectors carry the blocks."""

    requires = Calico.requires + ("bird", "birdc")
    options = frozenset({"bgp", "route_reflectors"})
    ASN = 64512

    def __init__(self, cluster: "ClusterContext") -> None:
        super().__init__(cluster)
        self.daemons = Daemons()
        self.birds: dict[str, Bird] = {}  # the nodes' (the router's too, on a routed underlay)
        self.started_at: float | None = None  # monotonic time the first BIRD was started
        self.converged_at: float | None = None  # ... and every node held every block
        # (monotonic time, peer blocks held by the witness) per readiness round: how the
        # blocks spread, not only when the last one arrived (k8stopo scale's blocks_*_ms)
        self.witness_blocks: list[tuple[float, int]] = []

    # -- BIRD -----------------------------------------------------------------------
    def kernel_programming(self, node: Node) -> dict[str, Any]:
        """Template values of the calico_kernel_programming filter (tunnels, in subclasses)."""
        return {"tunnel": None, "direct_subnet": None}

    def reflectors(self) -> list[Node]:
        """The route reflector nodes (n1, and n2 with two), none for the mesh."""
        spec = self.cluster.spec
        return list(self.cluster.nodes[:spec.route_reflectors]) if spec.bgp == "rr" else []

    def peerings(self, node: Node) -> list[Peering]:
        """confd's peers: every other node in the mesh; with reflectors, a reflector peers
        with everyone (its clients as ``rr client``), a client with the reflectors only."""
        def ip_name(prefix: str, peer: Node) -> str:
            return f"{prefix}_{str(peer.ip).replace('.', '_')}"

        reflectors = self.reflectors()
        others = [p for p in self.cluster.nodes if p is not node]
        if not reflectors:
            nodes = [Peering(ip_name("Mesh", p), str(p.ip), passive=str(p.ip) > str(node.ip))
                     for p in others]
        elif node in reflectors:
            nodes = [Peering(ip_name("Node", p), str(p.ip), rr_client=p not in reflectors)
                     for p in others]
        else:
            nodes = [Peering(ip_name("Node", p), str(p.ip)) for p in reflectors]
        return nodes + self.tor_peerings(node)

    def dials(self, node: Node) -> list[Node]:
        """BIRD's peers among the nodes: the mesh, or a client's reflectors and a
        reflector's everyone (a thousand clients do not resolve each other at start)."""
        peers = {p.ip for p in self.peerings(node)}
        return [n for n in self.cluster.nodes if str(n.ip) in peers]

    def tor_peerings(self, node: Node) -> list[Peering]:
        """On the routed underlay, the node-specific BGPPeer with its subnet's router."""
        if self.cluster.underlay.router is None:
            return []
        tor = str(self.cluster.underlay.gateway(node))
        return [Peering(f"Node_{tor.replace('.', '_')}", tor)]

    def bird(self, node: Node) -> Bird:
        """A node's BIRD with what confd would render for it."""
        return Bird(node, node=node.name, router_id=node.ip, node_ip=node.ip,
                    block=node.pod_cidr, pool=self.cluster.pod_cidr, asn=self.ASN,
                    peers=self.peerings(node), cluster_id=RR_CLUSTER_ID,
                    netlink_rx_buffer=NETLINK_RX_BUFFER, **self.kernel_programming(node))

    def bird_config(self, node: Node) -> str:
        """The config a node's BIRD is given (rendered, not written)."""
        return self.bird(node).rendered()

    def connect(self) -> None:
        """Every BIRD's config checked by BIRD before any starts; then the route reflectors
        (every client dials them) and the clients, a batch of nodes at once, each batch
        waited for until its control sockets answer; the routed underlay's router last."""
        birds = {node.name: self.bird(node) for node in self.cluster.nodes}
        router = self.cluster.underlay.router
        if router is not None:
            peers = [{"ip": str(n.ip), "via": str(self.cluster.underlay.gateway(n))}
                     for n in self.cluster.nodes]
            birds[router.name] = TorBird(router, router=router.name, router_id=router.ip,
                                         asn=self.ASN, peers=peers)
        self.birds = birds
        reflectors = [birds[n.name] for n in self.reflectors()]
        rest = [b for b in birds.values() if b not in reflectors]
        per_daemon(lambda b: b.write_config(), list(birds.values()))
        self.started_at = time.monotonic()
        self.daemons.start(reflectors, *(rest[i:i + START_BATCH]
                                         for i in range(0, len(rest), START_BATCH)),
                           timeout=Bird.READY_TIMEOUT)

    def start_bird(self, node: Node) -> None:
        """Start a node's BIRD again (after :meth:`stop_bird`), its config as before."""
        bird = self.birds[node.name]
        bird.start()
        bird.wait_ready()

    def stop_bird(self, node: Node) -> None:
        """Stop a node's BIRD as calico-node's shutdown does (SIGTERM: it closes its sessions
        with a Cease, so peers withdraw its block at once)."""
        self.birds[node.name].stop()

    def netlink_drops(self) -> list[str]:
        """Where BIRD's log says the kernel dropped netlink messages meant for it (each
        such BIRD fell back to rescanning its kernel table)."""
        return [name for name, bird in self.birds.items() if bird.netlink_dropped()]

    def birdc(self, node: Endpoint, *command: str) -> str:
        return node.output(["birdc", "-s", self.birds[node.name].ctl, *command])

    def established(self, node: Node) -> int:
        """BGP sessions of this node that are up."""
        return sum(1 for line in self.birdc(node, "show", "protocols").splitlines()
                   if line.startswith(("Mesh_", "Node_")) and "Established" in line)

    def speakers(self) -> dict[str, Endpoint]:
        """Every BIRD of the run by name: the nodes', and the routed underlay's router's."""
        router = self.cluster.underlay.router
        return {e.name: e for e in [*self.cluster.nodes, *([router] if router else [])]}

    def missing_everywhere(self) -> dict[str, list[str]]:
        """Per BGP speaker, the peer blocks its kernel table lacks (those lacking none left
        out); they are asked at once, so a poll round of a large cluster stays short."""
        speakers = self.speakers()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = dict(zip(speakers, pool.map(self.missing_blocks, speakers.values())))
        return {name: blocks for name, blocks in found.items() if blocks}

    def wait_ready(self, timeout: float) -> None:
        """Poll the nodes' kernel tables (and the routed underlay's router's) until each
        holds every peer's block via BIRD.

        A node found complete is not asked again: asking a thousand nodes every round
        is a thousand ``ip`` processes competing with the BIRDs they wait for, so each
        round resumes at the first node still incomplete (eight asked at once). The last
        node (never a reflector) is asked every round until complete: a witness of how the
        blocks spread, since every node learns them through the same peers."""
        deadline = time.monotonic() + timeout
        speakers = self.speakers()
        router = self.cluster.underlay.router
        pending = list(speakers.values())
        witness, peers = self.cluster.nodes[-1], len(self.cluster.nodes) - 1
        while True:
            if not self.witness_blocks or self.witness_blocks[-1][1] < peers:
                held = peers - len(self.missing_blocks(witness))
                self.witness_blocks.append((time.monotonic(), held))
            pending = self._incomplete(pending)
            if not pending:
                self._converged(peers)
                return
            self.daemons.check_running()
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        missing = self.missing_everywhere()
        if not missing:  # complete in the very last instant
            self._converged(peers)
            return
        worst = max(missing, key=lambda n: len(missing[n]))
        try:
            protocols = self.birdc(speakers[worst], "show", "protocols").strip()
        except proc.CommandError as exc:
            protocols = f"(birdc failed: {exc})"
        raise NotReady(
            f"BGP did not converge in {timeout:.0f}s: {len(missing)} of {len(speakers)} "
            f"nodes{' and router' if router else ''} still lack peer blocks ({worst} lacks "
            f"{len(missing[worst])}, e.g. {', '.join(missing[worst][:3])}); "
            f"`birdc show protocols` on {worst}:\n{protocols}")

    def _converged(self, peers: int) -> None:
        """Every node holds every block now (the witness too, if it filled up since it was
        last asked)."""
        self.converged_at = time.monotonic()
        if self.witness_blocks[-1][1] < peers:
            self.witness_blocks.append((self.converged_at, peers))

    def _incomplete(self, pending: list[Endpoint]) -> list[Endpoint]:
        """``pending`` from the first group of eight with a node lacking a peer block."""
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for i in range(0, len(pending), 8):
                if any(pool.map(self.missing_blocks, pending[i:i + 8])):
                    return pending[i:]
        return []

    def missing_blocks(self, node: Endpoint) -> list[str]:
        have = node.netlink.route_dsts(RTPROT_BIRD)  # `ip -4 route show proto bird`
        return [str(p.pod_cidr) for p in self.cluster.nodes
                if p is not node and str(p.pod_cidr) not in have]

    def stop(self) -> None:
        """Every BIRD at once, killed: their Ceases would only have the reflectors relay
        withdrawals among nodes that are going too (:meth:`stop_bird` is the graceful
        stop of one node)."""
        self.daemons.stop()


class CalicoBGP(CalicoBird):
    name = "calico-bgp"
    wire = "plain IP with pod IPs; BGP on TCP 179 between nodes"


class CalicoIPIP(CalicoBird):
    """calico-bgp plus IP-in-IP: pool ``ipipMode: Always`` (or ``CrossSubnet``).

    Where the kernel has the ipip module, ``tunl0`` is its fallback device, configured as
    Felix's ipip_mgr does. This kernel has none (nor gre/fou), so the stand-in keeps every
    hop that Calico's routes and rules see: ``tunl0`` is one end of a veth pair (ARP off;
    the other end, ``tunl0-sink``, receives nothing) holding the tunnel address, BIRD's
    routes point at it, and tc eBPF programs compiled by clang for this run
    (k8stopo/bpf/calico_ipip.c) encapsulate on tunl0's egress — next hop from the route,
    outer header protocol 4, GSO typed IPXIP4 — and redirect to the NIC, and decapsulate
    protocol 4 from Calico hosts at the NIC's ingress. Decapsulated packets enter the stack
    on the NIC rather than on tunl0 (no Felix rule matches ``-i tunl0``), and Felix's
    cali-INPUT IPIP rules see no protocol-4 packet (the program applies the same host check).
    """

    name = "calico-ipip"
    wire = "IP protocol 4 between node IPs, inner pod IPs"
    overhead = 20  # the outer IPv4 header (felix ipipMTUOverhead)
    requires = CalicoBird.requires + ("ipip-datapath",)
    options = CalicoBird.options | {"ipip_mode"}
    tunnel_device = felix.IPIP_DEVICE
    SINK = "tunl0-sink"

    def __init__(self, cluster: "ClusterContext") -> None:
        super().__init__(cluster)
        self.datapath: str | None = None  # "ipip" (kernel module) or "tc-bpf"
        self._bpf_object: Path | None = None
        self._first = threading.Lock()  # nodes are set up at once: one decides, one compiles

    def kernel_programming(self, node: Node) -> dict[str, Any]:
        """BIRD puts peers' blocks on tunl0 (onlink via the peer); cross-subnet leaves the
        peers of the node's own underlay subnet on the NIC."""
        direct = self.node_subnet(node) if self.cluster.spec.ipip_mode == "cross-subnet" else None
        return {"tunnel": self.tunnel_device, "direct_subnet": direct}

    @staticmethod
    def node_subnet(node: Node) -> ipaddress.IPv4Network:
        """The underlay subnet of the node's NIC (what confd compares next hops with)."""
        addr = json.loads(node.output(["ip", "-j", "-4", "addr", "show", "dev", node.intf]))
        info = addr[0]["addr_info"][0]
        return ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network

    def setup_node(self, node: Node) -> None:
        super().setup_node(node)
        with self._first:
            if self.datapath is None:
                self.datapath = "ipip" if self._kernel_tunl0(node) else "tc-bpf"
                log.info("calico-ipip datapath: %s", "kernel ipip tunl0"
                         if self.datapath == "ipip" else "tc eBPF stand-in for the absent ipip module")
            elif self.datapath == "ipip":
                self._kernel_tunl0(node)
            obj = self._compile() if self.datapath == "tc-bpf" else None
        if obj is not None:
            self._bpf_tunl0(node, obj)
        node.batch("ip", [["link", "set", "tunl0", "mtu", self.pod_mtu, "up"],
                          ["addr", "add", f"{tunnel_address(node)}/32", "dev", "tunl0"]])

    @staticmethod
    def _kernel_tunl0(node: Node) -> bool:
        """Felix's ``LinkAdd(Iptun{tunl0})``, tolerating the module's fallback device."""
        if node.run(["ip", "link", "show", "tunl0"], check=False).returncode == 0:
            return True
        return node.run(["ip", "link", "add", "tunl0", "type", "ipip"],
                        check=False).returncode == 0

    def _bpf_tunl0(self, node: Node, obj: Path) -> None:
        node.batch("ip", [["link", "add", "tunl0", "type", "veth", "peer", "name", self.SINK],
                          ["link", "set", "tunl0", "arp", "off"],
                          ["link", "set", self.SINK, "mtu", self.pod_mtu, "up"]])
        for dev in ("tunl0", self.SINK):
            node.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", 1)
        node.batch("tc", [["qdisc", "add", "dev", "tunl0", "clsact"],
                          ["filter", "add", "dev", "tunl0", "egress", "bpf", "direct-action",
                           "obj", obj, "sec", "tc/egress"],
                          ["qdisc", "add", "dev", node.intf, "clsact"],
                          ["filter", "add", "dev", node.intf, "ingress", "bpf", "direct-action",
                           "obj", obj, "sec", "tc/ingress"]])

    def _compile(self) -> Path:
        """Build the BPF object once per run, into the run's directory: the Calico hosts
        (Felix's cali40all-hosts-net) are compiled in as a switch."""
        if self._bpf_object is None:
            build = self.cluster.state.directory("bpf")
            (build / "calico_hosts.h").write_text(render(
                "calico_hosts.h", hosts=sorted(int(n.ip) for n in self.cluster.nodes)))
            obj = build / "calico_ipip.o"
            proc.run(["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
                      f"-I/usr/include/{os.uname().machine}-linux-gnu", "-I", build,
                      "-c", BPF_SOURCE, "-o", obj])
            self._bpf_object = obj
        return self._bpf_object


class CalicoVXLAN(Calico):
    """Felix's VXLAN mode Always: no BIRD; Felix programs every peer from the datastore."""

    name = "calico-vxlan"
    wire = "UDP dst 4789, VXLAN VNI 4096, inner pod IPs"
    overhead = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 (felix vxlanMTUOverhead)
    requires = Calico.requires + ("vxlan",)
    DEVICE = felix.VXLAN_DEVICE
    VNI = 4096
    PORT = felix.VXLAN_PORT
    tunnel_device = DEVICE

    def setup_node(self, node: Node) -> None:
        super().setup_node(node)
        node.batch("ip", [["link", "add", self.DEVICE, "type", "vxlan", "id", self.VNI,
                           "local", node.ip, "dev", node.intf, "dstport", self.PORT, "nolearning"],
                          ["link", "set", self.DEVICE, "mtu", self.pod_mtu, "up"],
                          ["addr", "add", f"{tunnel_address(node)}/32", "dev", self.DEVICE],
                          # Felix's route manager blackholes the local block (BIRD would,
                          # were it running)
                          ["route", "add", "blackhole", node.pod_cidr, "proto", "80"]])

    def connect(self) -> None:
        """vxlan_mgr: per peer a permanent ARP entry for its VTEP, an FDB entry to its node,
        and its block via its VTEP address onlink (calico-node publishes the VTEP MAC)."""
        macs = {n.name: n.link(self.DEVICE)["address"] for n in self.cluster.nodes}
        per_node(lambda node: vxlan_peers(node, self.cluster.nodes, self.DEVICE, macs,
                                          route_mtu=self.pod_mtu), self.cluster.nodes)
