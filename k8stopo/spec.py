"""What a user asks for, checked at the edge before anything is created.

Every check raises :class:`SpecError` with one line that the CLI prints before
exiting with status 2.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .workload import Workload


#: every variant SPEC names, in its order (the registry in k8stopo.cni has those built so far)
SPEC_VARIANTS = ("host", "flannel-vxlan", "flannel-host-gw", "flannel-udp", "calico-bgp",
                 "calico-ipip", "calico-vxlan", "weave-fastdp", "weave-sleeve", "macvlan",
                 "docker-bridge", "docker-overlay")
SCENARIOS = ("host-to-host", "pod-to-pod-same-node", "pod-to-pod-cross-node",
             "pod-to-service", "node-to-pod")
PROTOCOLS = ("tcp", "udp", "icmp")
UNDERLAY_CIDR = "172.20.0.0/16"  # k8stopo/topo.py repeats it: it must load alone (mn --custom)
UNDERLAYS = ("l2", "routed")  # one segment, or two subnets behind a router (topo.py repeats it)
MIN_MTU = 576  # the smallest MTU every IPv4 host must accept (RFC 791)


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
    underlay: str = "l2"  # one of UNDERLAYS

    def check_basics(self) -> None:
        """Checks that do not depend on the variant."""
        if not 1 <= self.nodes <= 250:
            raise SpecError(f"--nodes must be between 1 and 250, not {self.nodes}")
        if self.pods_per_node < 0:
            raise SpecError(f"--pods-per-node must be 0 or more, not {self.pods_per_node}")
        if not MIN_MTU <= self.mtu <= 65535:
            raise SpecError(f"--mtu must be between {MIN_MTU} and 65535, not {self.mtu}")
        underlay = ipv4_network(self.underlay_cidr, "underlay CIDR")
        if underlay.num_addresses - 2 < self.nodes:
            raise SpecError(f"underlay {underlay} has no room for {self.nodes} nodes")
        if self.underlay not in UNDERLAYS:
            raise SpecError(f"unknown underlay {self.underlay!r} (known: {', '.join(UNDERLAYS)})")
        # routed: each half holds host numbers 1..nodes below its router address
        if self.underlay == "routed" and underlay.num_addresses // 2 - 3 < self.nodes:
            raise SpecError(f"underlay {underlay} split in two subnets has no room for "
                            f"{self.nodes} nodes and the router")


@dataclass(frozen=True)
class BenchSpec:
    """One ``k8stopo bench`` invocation: a matrix of variants × scenarios × protocols."""

    cnis: tuple[str, ...]
    scenarios: tuple[str, ...]
    protocols: tuple[str, ...]
    nodes: int = 2
    pods_per_node: int = 2
    duration: int = 10  # iperf3 -t takes whole seconds
    repeat: int = 3
    streams: int = 1
    mtu: int = 1500
    udp_bandwidth: str = "0"
    underlay: str = "l2"

    def check(self) -> None:
        if not 1 <= self.duration <= 3600:
            raise SpecError(f"--duration must be between 1 and 3600 seconds, not {self.duration}")
        if not 1 <= self.repeat <= 100:
            raise SpecError(f"--repeat must be between 1 and 100, not {self.repeat}")
        if not 1 <= self.streams <= 128:
            raise SpecError(f"--streams must be between 1 and 128, not {self.streams}")
        if not re.fullmatch(r"\d+(\.\d+)?[KMG]?", self.udp_bandwidth):
            raise SpecError(f"--udp-bandwidth {self.udp_bandwidth!r} is not an iperf3 rate "
                            "such as 0 (unlimited), 500M or 2G")
        if "pod-to-service" in self.scenarios:
            raise SpecError("scenario 'pod-to-service' needs Services, which this version "
                            "does not implement yet")
        if self.nodes < 2 and {"host-to-host", "pod-to-pod-cross-node",
                               "node-to-pod"} & set(self.scenarios):
            raise SpecError("cross-node scenarios need --nodes 2 or more")
        if "pod-to-pod-same-node" in self.scenarios and self.pods_per_node < 2:
            raise SpecError("scenario 'pod-to-pod-same-node' needs --pods-per-node 2 or more")
        if self.pods_per_node < 1 and {"pod-to-pod-cross-node", "node-to-pod"} & set(self.scenarios):
            raise SpecError("pod scenarios need --pods-per-node 1 or more")

    def cluster(self, cni: str) -> ClusterSpec:
        return ClusterSpec(cni=cni, nodes=self.nodes, pods_per_node=self.pods_per_node,
                           mtu=self.mtu, underlay=self.underlay)
