"""The underlay: the switch (or two switches and a router) the nodes' NICs plug into.

Built from :class:`k8stopo.topo.K8sTopo` by Mininet (every host a namespace held by a
shell, so ``up --cli`` reaches nodes, switches and router by name), its veth pairs,
addresses and loopbacks made over netlink (:mod:`k8stopo.netlink`) rather than typed into
those shells, then configured as a Kubernetes node's host is (MTU, ip_forward, default
route). What the cluster's agents ask
of the wire lives here too: a segment's gateway, a node's switch port, the neighbour
entries seeded at scale, offloads. Pods are not the underlay's: see :mod:`k8stopo.pods`.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import resource
import threading
from typing import Any, Callable, Sequence

from mininet.link import Intf, Link
from mininet.net import Mininet
from mininet.node import Host

from . import netlink, proc
from .agent import WORKERS, per_node
from .node import Endpoint, Node, delete_links
from .runstate import RunState
from .spec import ClusterSpec, ipv4_network
from .topo import ROUTER, K8sTopo, gateway, node_name, segment_index, subnets, switch_names

# Importing mininet.log makes MininetLogger the class of every logger created later, each
# with its own console handler: every k8stopo line would be printed twice. Undo that.
logging.setLoggerClass(logging.Logger)


class _Tracked:
    """Mixin for Mininet nodes: record each shell's pid the moment it exists."""

    run_state: RunState

    def startShell(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 (Mininet's name)
        super().startShell(*args, **kwargs)  # type: ignore[misc]
        self.run_state.track_pid(self.pid, f"mininet shell {self.name}")  # type: ignore[attr-defined]


def _netlink(host: Any) -> netlink.Namespace:
    """A Mininet host's netlink socket, logged under the host's name."""
    ns = netlink.at(host.pid, host.run_state.prefix)
    ns.label = host.name
    return ns


class _NetlinkConfig(Host):
    """Mixin for Mininet hosts: the loopback brought up over netlink, not ``ifconfig lo up``
    typed into the shell (a round trip per host)."""

    run_state: RunState

    def config(self, mac: Any = None, ip: Any = None, defaultRoute: Any = None,  # noqa: N803
               lo: str = "up", **_params: Any) -> dict[str, Any]:
        r: dict[str, Any] = {}
        self.setParam(r, "setMAC", mac=mac)
        self.setParam(r, "setIP", ip=ip)
        self.setParam(r, "setDefaultRoute", defaultRoute=defaultRoute)
        _netlink(self).batch("ip", [["link", "set", "lo", lo]])
        return r


def tracked(cls: type[Host], state: RunState) -> type[Host]:
    """``cls`` whose shells are recorded in ``state`` as they start, and whose interfaces
    are configured over netlink."""
    bases = (_Tracked, _NetlinkConfig) if cls is Host else (_Tracked, cls, _NetlinkConfig)
    return type(f"K8s{cls.__name__}", bases, {"run_state": state})


class _NetlinkIntf(Intf):
    """Mininet's interface, its address and state set over its namespace's netlink socket
    instead of ``ifconfig`` typed into the node's shell."""

    def _ns(self) -> netlink.Namespace:
        return _netlink(self.node)

    def setIP(self, ipstr: str, prefixLen: Any = None) -> str:  # noqa: N802,N803
        address = ipstr if "/" in ipstr else f"{ipstr}/{prefixLen}"
        self.ip, self.prefixLen = address.split("/")
        self._ns().batch("ip", [["addr", "add", address, "dev", self.name],
                                ["link", "set", self.name, "up"]])
        return ""

    def isUp(self, setUp: bool = False) -> bool:  # noqa: N802,N803
        if setUp:
            self._ns().batch("ip", [["link", "set", self.name, "up"]])
            return True
        return bool(self._ns().link(self.name)["operstate"] != "DOWN")


class _NetlinkLink(Link):
    """Mininet's veth link, made by one netlink request in the first node's namespace (the
    peer created straight into the second's) instead of ``ip link add`` in its shell."""

    @classmethod
    def makeIntfPair(cls, intfname1: str, intfname2: str, addr1: Any = None,  # noqa: N802
                     addr2: Any = None, node1: Any = None, node2: Any = None,
                     deleteIntfs: bool = True) -> None:  # noqa: N803
        _netlink(node1).batch(
            "ip", [["link", "add", intfname1, "type", "veth", "peer", "name", intfname2,
                    "netns", node2.pid]])


class _Mininet(Mininet):
    """Mininet whose hosts' shells start at once, before its build adds them in order: a
    thousand nodes' shells, each a spawn and a prompt round trip, take seconds in a row."""

    def buildFromTopo(self, topo: Any = None) -> None:  # noqa: N802 (Mininet's name)
        topo = topo or self.topo

        def start(name: str) -> tuple[str, Host]:
            params = dict(topo.nodeInfo(name))
            return name, params.pop("cls", self.host)(name, **params)

        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            self._started = dict(pool.map(start, topo.hosts()))
        super().buildFromTopo(topo)

    def addHost(self, name: str, cls: Any = None, **params: Any) -> Host:  # noqa: N802
        host = getattr(self, "_started", {}).pop(name, None)
        return super().addHost(name, cls, **params) if host is None else self.adopt(host)

    def adopt(self, host: Host) -> Host:
        """Register a host whose shell was started beforehand, as ``addHost`` registers
        the ones it makes (Mininet's lists are not thread-safe: callers serialise this)."""
        self.hosts.append(host)
        self.nameToNode[host.name] = host
        return host


class Underlay:
    """The run's wire: Mininet's switches, router and node namespaces, and their setup."""

    def __init__(self, spec: ClusterSpec, state: RunState) -> None:
        self.spec = spec
        self.state = state
        self.cidr = ipv4_network(spec.underlay_cidr, "underlay CIDR")
        self.router: Endpoint | None = None  # the routed underlay's router, once built
        self.seeded = False  # neighbour entries seeded (see seed_neighbours)
        self._net: _Mininet | None = None
        self._lock = threading.Lock()  # Mininet's lists, for hosts added later (the CLI's)

    @property
    def net(self) -> _Mininet:
        """The Mininet network (its CLI resolves the run's names through it)."""
        assert self._net is not None, "the underlay is not built"
        return self._net

    def build(self, ranges: Sequence[ipaddress.IPv4Network]) -> list[Node]:
        """Start every namespace and link, and return the nodes (``ranges``: each node's
        pod range, or none with hostNetwork)."""
        # Mininet.init() would retune the host's TCP buffers and ARP tables
        # (fixLimits); measure on the kernel's defaults instead, and only lift
        # this process's own open-file limit (every Mininet node holds a pty).
        Mininet.inited = True
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
        # Every host, the underlay switches and router included, is a namespace: the run's
        # veths are created between namespaces and never appear in the root namespace.
        topo = K8sTopo(nodes=self.spec.nodes, cidr=self.spec.underlay_cidr,
                       underlay=self.spec.underlay)
        for name in topo.hosts():  # the switches' and router's own classes, tracked too
            info = topo.nodeInfo(name)
            if "cls" in info:
                topo.setNodeInfo(name, {**info, "cls": tracked(info["cls"], self.state)})
        self._net = _Mininet(topo=topo, host=tracked(Host, self.state), link=_NetlinkLink,
                             intf=_NetlinkIntf, controller=None, build=False,
                             waitConnected=False)
        self._net.build()
        self._net.start()
        nodes = []
        for i in range(self.spec.nodes):
            mn = self._net[node_name(i)]
            nodes.append(Node(name=mn.name, ip=ipaddress.IPv4Address(mn.IP()), pid=mn.pid,
                              state=self.state, index=i, intf=mn.defaultIntf().name, mn=mn,
                              pod_cidr=ranges[i] if ranges else None))
        if self.spec.underlay == "routed":
            self.router = Endpoint(name=ROUTER, ip=self.gateway(nodes[0]),
                                   pid=self._net[ROUTER].pid, state=self.state)
        return nodes

    def prepare(self, node: Node) -> None:
        """What every Kubernetes node's host has, whatever its CNI (nodes at once)."""
        if self.spec.mtu != 1500:
            port, switch = self.switch_port(node)
            netlink.at(switch, self.state.prefix).batch("ip", [["link", "set", port, "mtu", self.spec.mtu]])
        # Real nodes have a default route; Calico's proxy-ARP gateway relies on it.
        node.batch("ip", [*([["link", "set", node.intf, "mtu", self.spec.mtu]]
                            if self.spec.mtu != 1500 else []),
                          ["route", "replace", "default", "via", self.gateway(node),
                           "dev", node.intf]])
        node.sysctl("net.ipv4.ip_forward", 1)

    def gateway(self, node: Node) -> ipaddress.IPv4Address:
        """The router address of ``node``'s segment (absent on one segment, as no packet
        may leave the run; the router ``r1`` on a routed underlay)."""
        spec = self.spec
        segment = segment_index(node.index, spec.nodes, spec.underlay)
        return gateway(subnets(spec.underlay_cidr, spec.underlay)[segment])

    @staticmethod
    def switch_port(node: Node) -> tuple[str, int]:
        """(name, pid of its namespace) of ``node``'s port on its underlay switch."""
        intf = node.mn.defaultIntf()
        port = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
        return port.name, port.node.pid

    def seed_neighbours(self, nodes: Sequence[Node],
                        dials: Callable[[Node], Sequence[Node]]) -> None:
        """Permanent underlay neighbour entries on every node for the nodes its agent
        dials as it starts (:meth:`Variant.dials`: every other node, or BGP's peers).

        A stand-in for a network at scale, said so in ``describe()``: a hundred nodes
        ARPing for each other at once on one emulated segment, all on two CPUs, lose
        enough requests that BGP sessions fail with "No route to host" for minutes; a
        real underlay's switches and NICs absorb that. Only the underlay's own
        addresses are seeded; pods still resolve their neighbours themselves."""
        macs = {n.name: n.link(n.intf)["address"] for n in nodes}
        segment = {n.name: self.gateway(n) for n in nodes}

        def seed(node: Node) -> None:
            node.batch("ip", [["neigh", "replace", peer.ip, "lladdr", macs[peer.name],
                               "dev", node.intf, "nud", "permanent"]
                              for peer in dials(node)
                              if segment[peer.name] == segment[node.name]])

        per_node(seed, nodes)
        self.seeded = True

    def offloads_off(self, endpoints: Sequence[int]) -> None:
        """Segmentation and checksum offloads off on every veth of the emulated wire (the
        underlay's ports, and those of ``endpoints``: nodes' NICs, pods' eth0 and their
        host ends). With them on, veths and bridges pass 64 KB GSO super-packets
        unsegmented, so an overlay encapsulates once where a NIC without tunnel offloads
        handles ~45 frames: encapsulation looks cheaper than on it."""
        for pid in [*self.holders(), *endpoints]:
            for dev in netlink.at(pid, self.state.prefix).links("veth"):
                proc.run(["ethtool", "-K", dev["ifname"], "tso", "off", "gso", "off", "gro", "off",
                          "tx", "off", "rx", "off"], pid)

    def holders(self) -> list[int]:
        """A process in each of the underlay's own namespaces (switches, router)."""
        return [*(self.net[name].pid for name in switch_names(self.spec.underlay)),
                *([self.router.pid] if self.router else [])]

    def describe(self) -> list[str]:
        """The underlay's lines of ``Cluster.describe``."""
        lines = []
        if self.seeded:
            lines.append("  (underlay neighbour entries seeded, a stand-in for ARP at this scale)")
        if self.router is not None:
            ports = (f"{gateway(s)}/{s.prefixlen}"
                     for s in subnets(self.spec.underlay_cidr, self.spec.underlay))
            lines.append(f"  {self.router.name:<8} routes between {', '.join(ports)}")
        return lines

    def add_host(self, host: Host) -> Host:
        """Register a host made after the build (a pod's shell for the CLI) with Mininet."""
        with self._lock:
            return self.net.adopt(host)

    def stop(self) -> None:
        """Mininet's stop, in its order (links, then hosts), with each switch's ports deleted
        at once (:func:`delete_links`) instead of two shell round trips each."""
        if self._net is None:
            return
        for name in switch_names(self.spec.underlay):
            switch = self._net.get(name) if name in self._net else None
            if switch is not None and switch.shell is not None:
                delete_links(switch.pid, [i.name for i in switch.intfList() if i.name != "lo"])
        for host in self._net.hosts:
            host.terminate()
