"""What a user asks for, checked at the edge before anything is created.

Every check raises :class:`SpecError` with one line that the CLI prints before
exiting with status 2.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from .workload import Workload

#: every variant, in SPEC's order: the names alone, for what must not import the variants
#: (charts' order); k8stopo.cni.VARIANTS holds their classes in this order
SPEC_VARIANTS = ("host", "flannel-vxlan", "flannel-host-gw", "flannel-udp", "calico-bgp",
                 "calico-ipip", "calico-vxlan", "weave-fastdp", "weave-sleeve", "macvlan",
                 "docker-bridge", "docker-overlay")
SCENARIOS = ("host-to-host", "pod-to-pod-same-node", "pod-to-pod-cross-node",
             "pod-to-service", "node-to-pod", "pod-to-nodeport", "pod-to-dns")
PROTOCOLS = ("tcp", "udp", "icmp", "tcp_rr", "dns")  # k8stopo.measure.PROTOCOLS runs them
OFFLOADS = ("on", "off")
UNDERLAY_CIDR = "172.20.0.0/16"  # k8stopo/topo.py repeats it: it must load alone (mn --custom)
MAX_NODES = 1024  # Calico's 192.168.0.0/16 holds 1,024 /26 blocks; ipam refuses what does not fit
UNDERLAYS = ("l2", "routed")  # one segment, or two subnets behind a router (topo.py repeats it)
MIN_MTU = 576  # the smallest MTU every IPv4 host must accept (RFC 791)
BGP_MODES = ("mesh", "rr")  # Calico's node-to-node mesh, or route reflectors
IPIP_MODES = ("always", "cross-subnet")  # Calico IPPool ipipMode Always / CrossSubnet
FAULTS = ("underlay-link-down", "server-stopped", "node-stopped")  # k8stopo.faults injects them


class SpecError(ValueError):
    """Bad input: one clear line, exit status 2, nothing created."""


def ipv4_network(value: str, what: str) -> ipaddress.IPv4Network:
    """Parse a CIDR such as 10.244.0.0/16 (host bits must be zero)."""
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise SpecError(f"{what} {value!r} is not a valid CIDR: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise SpecError(f"{what} {value!r}: only IPv4 is supported")
    return net


def pick(values: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Split a comma list and check every item is allowed (order kept, no duplicates)."""
    items = tuple(dict.fromkeys(v.strip() for v in values.split(",") if v.strip()))
    if not items:
        raise SpecError(f"no {what} given")
    for item in items:
        if item not in allowed:
            raise SpecError(f"unknown {what} {item!r} (known: {', '.join(allowed)})")
    return items


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of one emulated cluster."""

    cni: str
    nodes: int = 2
    pods_per_node: int = 2
    mtu: int = 1500  # underlay (node NIC) MTU
    underlay_cidr: str = UNDERLAY_CIDR
    pod_cidr: str | None = None  # None: the variant's real default
    node_block: int | None = None  # prefix length of a node's pod range; None: default
    workload: Workload | None = None  # from --manifests; None: pods_per_node plain pods
    bgp: str = "mesh"  # Calico's BIRD peering: node-to-node mesh or route reflectors
    route_reflectors: int = 1  # with bgp "rr": how many nodes (n1, n2) reflect
    ipip_mode: str = "always"  # calico-ipip: encapsulate always, or only across subnets
    offloads: str = "on"  # "off": segmentation/checksum offloads off on every veth after the build
    underlay: str = "l2"  # one of UNDERLAYS

    def check_basics(self) -> None:
        """Checks that do not depend on the variant."""
        if not 1 <= self.nodes <= MAX_NODES:
            raise SpecError(f"--nodes must be between 1 and {MAX_NODES}, not {self.nodes}")
        if self.pods_per_node < 0:
            raise SpecError(f"--pods-per-node must be 0 or more, not {self.pods_per_node}")
        if not MIN_MTU <= self.mtu <= 65535:
            raise SpecError(f"--mtu must be between {MIN_MTU} and 65535, not {self.mtu}")
        if self.bgp not in BGP_MODES:
            raise SpecError(f"--bgp must be one of {', '.join(BGP_MODES)}, not {self.bgp!r}")
        if self.ipip_mode not in IPIP_MODES:
            raise SpecError(f"--ipip-mode must be one of {', '.join(IPIP_MODES)}, "
                            f"not {self.ipip_mode!r}")
        if not 1 <= self.route_reflectors <= 2:
            raise SpecError(f"--route-reflectors must be 1 or 2, not {self.route_reflectors}")
        if self.bgp == "mesh" and self.route_reflectors != 1:
            raise SpecError("--route-reflectors needs --bgp rr")
        if self.bgp == "rr" and self.route_reflectors >= self.nodes:
            raise SpecError(f"--bgp rr with {self.route_reflectors} route reflector(s) needs "
                            f"more nodes than that (--nodes {self.nodes})")
        underlay = ipv4_network(self.underlay_cidr, "underlay CIDR")
        if self.offloads not in OFFLOADS:
            raise SpecError(f"--offloads must be on or off, not {self.offloads!r}")
        if underlay.num_addresses - 2 < self.nodes:
            raise SpecError(f"underlay {underlay} has no room for {self.nodes} nodes")
        if self.underlay not in UNDERLAYS:
            raise SpecError(f"unknown underlay {self.underlay!r} (known: {', '.join(UNDERLAYS)})")
        # routed: each half holds host numbers 1..nodes below its router address
        if self.underlay == "routed" and underlay.num_addresses // 2 - 3 < self.nodes:
            raise SpecError(f"underlay {underlay} split in two subnets has no room for "
                            f"{self.nodes} nodes and the router")


#: BenchSpec parameters an experiment may sweep; the first two shape the cluster itself
SWEEPABLE = ("mtu", "offloads", "streams", "msg_size", "udp_bandwidth")
CLUSTER_PARAMS = ("mtu", "offloads")
MIN_MSG_SIZE, MAX_MSG_SIZE = 14, 65506  # what sockperf accepts for -m
MIN_UDP_LENGTH, MAX_UDP_LENGTH = 16, 65507  # iperf3's UDP header, the largest IPv4 datagram


@dataclass(frozen=True)
class BenchSpec:
    """One ``k8stopo bench`` invocation: a matrix of variants × scenarios × protocols,
    optionally swept over one parameter (``sweep = (name, values)``)."""

    cnis: tuple[str, ...]
    scenarios: tuple[str, ...]
    protocols: tuple[str, ...]
    nodes: int = 2
    pods_per_node: int = 2
    duration: int = 10  # whole seconds per measurement (iperf3 -t takes no fractions)
    repeat: int = 3
    streams: int = 1
    mtu: int = 1500
    udp_bandwidth: str = "0"
    udp_length: int = 0  # iperf3 -l for UDP (datagram payload bytes); 0 = iperf3's own choice
    bgp: str = "mesh"
    route_reflectors: int = 1
    ipip_mode: str = "always"
    offloads: str = "on"
    underlay: str = "l2"
    msg_size: int = 64  # tcp_rr request and response size
    sweep: tuple[str, tuple[object, ...]] | None = None
    experiment: str = ""  # the experiment file's name, if it came from one
    faults: tuple[str, ...] = ()  # measured again under each fault after each repeat's steps

    def points(self) -> list[BenchSpec]:
        """One spec per sweep value (just this one without a sweep), in sweep order."""
        if self.sweep is None:
            return [self]
        name, values = self.sweep
        changes: list[dict[str, Any]] = [{name: v} for v in values]
        return [dataclasses.replace(self, sweep=None, **c) for c in changes]

    def _check_parameters(self) -> None:
        if not 1 <= self.streams <= 128:
            raise SpecError(f"--streams must be between 1 and 128, not {self.streams}")
        if not re.fullmatch(r"\d+(\.\d+)?[KMG]?", self.udp_bandwidth):
            raise SpecError(f"--udp-bandwidth {self.udp_bandwidth!r} is not an iperf3 rate "
                            "such as 0 (unlimited), 500M or 2G")
        if self.udp_length and not MIN_UDP_LENGTH <= self.udp_length <= MAX_UDP_LENGTH:
            raise SpecError(f"--udp-length must be 0 (iperf3's choice) or between "
                            f"{MIN_UDP_LENGTH} and {MAX_UDP_LENGTH} bytes, not {self.udp_length}")
        if not MIN_MSG_SIZE <= self.msg_size <= MAX_MSG_SIZE:
            raise SpecError(f"--msg-size must be between {MIN_MSG_SIZE} and {MAX_MSG_SIZE} "
                            f"bytes, not {self.msg_size}")

    def check(self) -> None:
        if not 1 <= self.duration <= 3600:
            raise SpecError(f"--duration must be between 1 and 3600 seconds, not {self.duration}")
        if not 1 <= self.repeat <= 100:
            raise SpecError(f"--repeat must be between 1 and 100, not {self.repeat}")
        if self.sweep is not None:
            name, values = self.sweep
            if name not in SWEEPABLE:
                raise SpecError(f"cannot sweep {name!r} (sweepable: {', '.join(SWEEPABLE)})")
            if not values or len(set(values)) != len(values):
                raise SpecError(f"sweep over {name} needs distinct values, not {list(values)}")
        for point in self.points():
            point._check_parameters()
        if self.nodes < 2 and {"pod-to-service", "pod-to-nodeport"} & set(self.scenarios):
            raise SpecError("Service scenarios need --nodes 2 or more (the endpoint is on "
                            "another node than the client)")
        if ("pod-to-dns" in self.scenarios) != ("dns" in self.protocols):
            raise SpecError("scenario 'pod-to-dns' and protocol 'dns' go together "
                            "(dnsperf to cluster DNS); give both or neither")
        if self.nodes < 2 and {"host-to-host", "pod-to-pod-cross-node",
                               "node-to-pod"} & set(self.scenarios):
            raise SpecError("cross-node scenarios need --nodes 2 or more")
        if "pod-to-pod-same-node" in self.scenarios and self.pods_per_node < 2:
            raise SpecError("scenario 'pod-to-pod-same-node' needs --pods-per-node 2 or more")
        if self.pods_per_node < 1 and {"pod-to-pod-cross-node", "node-to-pod", "pod-to-service",
                                       "pod-to-nodeport", "pod-to-dns"} & set(self.scenarios):
            raise SpecError("pod scenarios need --pods-per-node 1 or more")

    def cluster(self, cni: str, options: frozenset[str] = frozenset()) -> ClusterSpec:
        """The cluster of one variant at this (single) point; ``options`` are the variant's
        own ClusterSpec fields (Variant.options): the others keep their defaults, so ``--bgp
        rr`` applies to the Calico BIRD variants of a ``--cni all`` run and leaves flannel
        alone."""
        own = {f: getattr(self, f) for f in ("bgp", "route_reflectors", "ipip_mode")
               if f in options}
        return ClusterSpec(cni=cni, nodes=self.nodes, pods_per_node=self.pods_per_node,
                           mtu=self.mtu, offloads=self.offloads, underlay=self.underlay,
                           **own)
