"""Input checks and IPAM, without building anything."""
from __future__ import annotations

import ipaddress

import pytest

from k8stopo import ipam
from k8stopo.cluster import Cluster
from k8stopo.cni import VARIANTS
from k8stopo.cni.docker import SharedRange
from k8stopo.spec import SPEC_VARIANTS, BenchSpec, ClusterSpec, SpecError, pick


@pytest.mark.parametrize("cni", [n for n, c in VARIANTS.items() if not c.host_network])
def test_node_ranges_are_disjoint_and_inside_the_pod_cidr(cni: str) -> None:
    cluster = Cluster(ClusterSpec(cni=cni, nodes=50, pods_per_node=2))
    assert cluster.pod_cidr is not None
    if issubclass(VARIANTS[cni], SharedRange):  # Docker: one range on every node, by design
        assert set(cluster.ranges) == {cluster.pod_cidr} and len(cluster.ranges) == 50
        return
    assert len(set(cluster.ranges)) == 50
    for a in cluster.ranges:
        assert a.subnet_of(cluster.pod_cidr)
        assert all(not a.overlaps(b) for b in cluster.ranges if b is not a)


@pytest.mark.parametrize("spec, message", [
    (ClusterSpec(cni="weave-nope"), "unknown CNI variant"),
    (ClusterSpec(cni="flannel-vxlan", pod_cidr="10.244.0.0/33"), "not a valid CIDR"),
    (ClusterSpec(cni="flannel-vxlan", pod_cidr="10.244.0.1/16"), "not a valid CIDR"),
    (ClusterSpec(cni="flannel-vxlan", pod_cidr="172.20.0.0/16"), "overlaps the underlay"),
    (ClusterSpec(cni="flannel-vxlan", pods_per_node=254), "do not fit"),
    (ClusterSpec(cni="calico-bgp", pods_per_node=62), "do not fit"),
    (ClusterSpec(cni="flannel-vxlan", pod_cidr="10.244.0.0/23", nodes=3), "holds 2"),
    (ClusterSpec(cni="flannel-vxlan", mtu=600), "leaves no room"),
    (ClusterSpec(cni="host", nodes=0), "--nodes"),
])
def test_bad_cluster_specs_are_refused(spec: ClusterSpec, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Cluster(spec)


def test_capacity_follows_host_local() -> None:
    block = ipaddress.IPv4Network("192.168.0.0/26")
    assert ipam.host_local_capacity(block, block[1]) == 61
    assert ipam.host_local_capacity(block, ipaddress.IPv4Address("169.254.1.1")) == 62
    Cluster(ClusterSpec(cni="calico-bgp", pods_per_node=61))  # the largest that fits


def test_comma_lists() -> None:
    assert pick("tcp, icmp,tcp", ("tcp", "udp", "icmp"), "protocol") == ("tcp", "icmp")
    with pytest.raises(SpecError, match="unknown protocol 'sctp'"):
        pick("tcp,sctp", ("tcp", "udp", "icmp"), "protocol")


def test_bench_spec_checks_scenarios_against_the_cluster_shape() -> None:
    spec = BenchSpec(cnis=("host",), scenarios=("pod-to-pod-same-node",), protocols=("tcp",),
                     pods_per_node=1)
    with pytest.raises(SpecError, match="pods-per-node 2"):
        spec.check()
    with pytest.raises(SpecError, match="Service scenarios need --nodes 2"):
        BenchSpec(cnis=("host",), scenarios=("pod-to-service",), protocols=("tcp",),
                  nodes=1).check()


def test_the_variant_names_are_the_registrys_in_its_order() -> None:
    """Charts order variants by spec.SPEC_VARIANTS without importing them; it must be the
    registry's names (a variant missing there would be charted last, alphabetically)."""
    assert tuple(VARIANTS) == SPEC_VARIANTS
