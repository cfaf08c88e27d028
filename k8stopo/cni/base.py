"""The interface every CNI variant implements.

A variant plays two parts, as in a real cluster: the *node agent* (flanneld,
calico-node with BIRD, weave router) that programs the node's datapath, and the
*CNI network configuration* that the agent writes for kubelet, which the real
reference plugins in /usr/lib/cni then execute for every pod.

It is an :class:`~k8stopo.agent.Agent` (setup_node, connect, pod_added,
wait_ready, stop) plus what only the pod network has::

    check(spec)            before anything exists: bad input -> SpecError; node ranges
    netconf(node)          CNI config handed to the plugins for each pod
    attach_pod(node, holder, ...)  attach a pod whose namespace the cluster made (CNI ADD);
                           the cluster lists it on its node and calls every pod_added
    detach_pod(pod)        undo it at teardown (default: CNI DEL)
    detach_all(node)       undo all of a node's pods at once (a large cluster's teardown)

Capabilities (``reaches_own_node``, ``pod_ip_routable``, ``nodes_reach_pods``,
``masquerades``, ``enforces_policy``) say what the real project's datapath does, so tests and the
bench ask the variant instead of special-casing names.
"""
from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, Sequence

from .. import ipam, native, pods
from ..agent import Agent
from ..daemon import Daemons
from ..node import delete_links
from ..spec import MIN_MTU, ClusterSpec, SpecError, ipv4_network
from ..templates import render

if TYPE_CHECKING:
    from ..context import ClusterContext
    from ..node import Endpoint, Node, Pod

def vxlan_peers(node: "Node", nodes: Sequence["Node"], device: str, macs: dict[str, str],
                route_mtu: int | None = None) -> None:
    """What flanneld's vxlan backend and Felix's vxlan_mgr both program on ``node`` for
    every peer: an FDB entry (the peer's VTEP MAC via its node IP), a permanent neighbour
    entry (its VTEP address, the first of its block) and its block via that address,
    onlink (``macs``: each node's VTEP MAC, by name, as published in the datastore)."""
    peers = [p for p in nodes if p is not node]
    blocks = {p.name: p.pod_cidr for p in peers if p.pod_cidr is not None}
    node.batch("bridge", [["fdb", "replace", macs[p.name], "dev", device, "dst", p.ip, "self",
                           "permanent"] for p in peers])
    node.batch("ip", [["neigh", "replace", blocks[p.name].network_address, "lladdr",
                       macs[p.name], "dev", device, "nud", "permanent"] for p in peers] +
                     [["route", "replace", blocks[p.name], "via", blocks[p.name].network_address,
                       "dev", device, "onlink", *(["mtu", route_mtu] if route_mtu else [])]
                      for p in peers])


class Variant(Agent):
    """Base class: a hostNetwork-free variant with no encapsulation."""

    name: ClassVar[str]
    #: one line: what crosses the underlay (SPEC's "on the underlay wire")
    wire: ClassVar[str]
    #: the real project's default pod CIDR and per-node range size
    pod_cidr: ClassVar[str] = ""
    node_prefixlen: ClassVar[int] = 24
    #: bytes the datapath adds to every packet on the underlay
    overhead: ClassVar[int] = 0
    #: doctor probe names this variant needs
    requires: ClassVar[tuple[str, ...]] = ("netns", "veth", "mnexec", "nsenter")
    #: pods share the node's namespace (hostNetwork)
    host_network: ClassVar[bool] = False
    #: a node reaches its own pods (macvlan's cannot: the parent NIC does not see its children)
    reaches_own_node: ClassVar[bool] = True
    #: a pod IP is reachable from other nodes (docker-bridge's 172.17.x is not)
    pod_ip_routable: ClassVar[bool] = True
    #: pod traffic to a node IP (outside the pod network) leaves masqueraded to the node's IP
    masquerades: ClassVar[bool] = True
    #: a node reaches pods by pod IP, on other nodes and (given ``reaches_own_node``) its
    #: own (docker-overlay's live in a namespace of their own, which no node routes into)
    nodes_reach_pods: ClassVar[bool] = True
    #: the real project enforces NetworkPolicy
    enforces_policy: ClassVar[bool] = False
    #: ClusterSpec fields beyond the basics that this variant honours (bgp, ipip_mode, ...)
    options: ClassVar[frozenset[str]] = frozenset()
    #: what breaks on a routed underlay (nodes on several subnets); empty: nothing
    routed_caveat: ClassVar[str] = ""

    @classmethod
    def kube_proxy_reaches_pods(cls) -> bool:
        """Whether kube-proxy, in the node's namespace, can carry Service traffic: the node
        must reach every pod IP (not docker-bridge's nor docker-overlay's) and its own pods,
        whose packets pass through its stack (macvlan's bypass it, parent and child apart)."""
        return cls.pod_ip_routable and cls.nodes_reach_pods and cls.reaches_own_node

    # -- before anything exists -------------------------------------------------
    @classmethod
    def check(cls, spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
        """Validate the spec for this variant; return each node's pod range."""
        cls.check_mtu_options(spec)
        if cls.host_network:
            return []
        pod_cidr = ipv4_network(spec.pod_cidr or cls.pod_cidr, "pod CIDR")
        underlay = ipv4_network(spec.underlay_cidr, "underlay CIDR")
        if pod_cidr.overlaps(underlay):
            raise SpecError(f"pod CIDR {pod_cidr} overlaps the underlay {underlay}")
        ranges = cls.split(pod_cidr, spec)
        for block in ranges:
            capacity = cls.capacity(block)
            if spec.pods_per_node > capacity:
                raise SpecError(f"{spec.pods_per_node} pods per node do not fit in a node's "
                                f"{block.prefixlen}-bit range ({capacity} addresses)")
        return ranges

    @classmethod
    def check_mtu_options(cls, spec: ClusterSpec) -> None:
        """What every variant checks: room for its encapsulation, and only its own options."""
        if spec.mtu - cls.overhead < MIN_MTU:
            raise SpecError(f"MTU {spec.mtu} leaves no room for {cls.name}'s {cls.overhead}-byte "
                            f"encapsulation (pods would get {spec.mtu - cls.overhead} < {MIN_MTU})")
        for option in ("bgp", "route_reflectors", "ipip_mode"):
            if (getattr(spec, option) != getattr(ClusterSpec, option)
                    and option not in cls.options):
                raise SpecError(f"--{option.replace('_', '-')} does not apply to {cls.name}")

    @classmethod
    def split(cls, pod_cidr: ipaddress.IPv4Network,
              spec: ClusterSpec) -> list[ipaddress.IPv4Network]:
        """Each node's range of the pod CIDR, as the real project's IPAM assigns them."""
        return ipam.node_ranges(pod_cidr, spec.node_block or cls.node_prefixlen, spec.nodes)

    @classmethod
    def capacity(cls, block: ipaddress.IPv4Network) -> int:
        """How many pods one node's range holds."""
        return ipam.host_local_capacity(block, cls.gateway(block))

    @classmethod
    def gateway(cls, pod_range: ipaddress.IPv4Network) -> ipaddress.IPv4Address | None:
        """The pods' default gateway (taken from ``pod_range`` when inside it)."""
        return pod_range[1]

    # -- the node agent -----------------------------------------------------------
    @property
    def pod_mtu(self) -> int:
        return self.cluster.spec.mtu - self.overhead

    def install_rules(self, endpoint: "Endpoint", template: str, **values: object) -> None:
        """Load the agent's iptables rules into a node (or a pod: ``values`` add to or
        override node, network, subnet); every set loaded is kept in the run's state."""
        values = {"node": endpoint.name, "network": self.cluster.pod_cidr,
                  "subnet": getattr(endpoint, "pod_cidr", None), **values}
        rules = render(template, **values)
        with self.cluster.state.path(endpoint.name, template).open("a") as record:
            record.write(rules)
        endpoint.run(["iptables-restore", "--test", "--noflush"], input=rules)  # its parser first
        endpoint.run(["iptables-restore", "--noflush"], input=rules)

    def netconf(self, node: "Node") -> dict[str, Any]:
        """The CNI network configuration for pods on ``node``."""
        raise NotImplementedError

    def attach_pod(self, node: "Node", holder: int | None, name: str, namespace: str,
                   labels: dict[str, str]) -> "Pod":
        """Attach a pod whose namespaces ``holder`` holds (None with hostNetwork) as
        kubelet would: CNI ADD with :meth:`netconf`. Only the attachment: the cluster lists
        the pod on its node and then calls :meth:`pod_added` (this agent's and the others')."""
        assert holder is not None
        return pods.add(node, name, self.netconf(node), holder, namespace=namespace,
                        labels=labels, runtime_config=self.runtime_config(node))

    def dials(self, node: "Node") -> list["Node"]:
        """The nodes whose underlay addresses ``node``'s agent contacts as soon as it
        starts, both ways (what the cluster seeds neighbour entries for at scale)."""
        return [n for n in self.cluster.nodes if n is not node]

    @contextlib.contextmanager
    def attaching(self, node: "Node") -> Iterator[None]:
        """Around the attachment of several pods of ``node`` back to back (the cluster's
        bring-up): a variant whose node agent coalesces updates applies them once, at the
        end, as it would with the updates that arrive while it is busy."""
        yield

    def runtime_config(self, node: "Node") -> dict[str, Any]:
        """What kubelet passes the plugins at run time for the next pod on ``node``
        (CNI ``runtimeConfig``, e.g. ``portMappings`` for hostPorts)."""
        return {}

    def detach_pod(self, pod: "Pod") -> None:
        """Undo :meth:`attach_pod` as kubelet does when a pod goes: CNI DEL."""
        pods.delete(pod)

    def detach_all(self, node: "Node") -> None:
        """Undo every pod of ``node`` at once (a large cluster's teardown): delete every veth
        in the node's namespace but its NIC, which takes each pod's pair whole."""
        delete_links(node.pid, [link["ifname"] for link in node.netlink.links("veth")
                                if link["ifname"] != node.intf])


class ForwardingVariant(Variant):
    """A variant whose datapath is one of k8stopo's C forwarders per node (flanneld's UDP
    proxy, weave's sleeve router): :meth:`start_forwarders` starts them as daemons of this
    agent, checked at ready time and killed at teardown."""

    program: ClassVar[str]  # the k8stopo.native program

    def __init__(self, cluster: "ClusterContext") -> None:
        super().__init__(cluster)
        self.forwarders: dict[str, native.Forwarder] = {}
        self.daemons = Daemons()

    def start_forwarders(self, args: Mapping["Node", Sequence[object]]) -> None:
        """A forwarder per node with its arguments, started at once; returns once each has
        its device and socket (DaemonError naming the first that did not)."""
        cls = native.FORWARDERS[self.program]
        started = {node.name: cls(node, a) for node, a in args.items()}
        self.forwarders.update(started)
        self.daemons.start(list(started.values()), timeout=native.READY_TIMEOUT)

    def wait_ready(self, timeout: float) -> None:
        self.daemons.check_running()

    def stop(self) -> None:
        self.daemons.stop()
        self.forwarders.clear()
