"""Calico as calico-node builds it: Felix's chains, IP-in-IP, VXLAN, route reflectors."""
from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from clusters import shared

from k8stopo import measure
from k8stopo.capture import Capture
from k8stopo.cluster import Cluster
from k8stopo.cni import calico, felix
from k8stopo.cni.calico import CalicoIPIP, tunnel_address, workload_iface
from k8stopo.daemon import Daemons
from k8stopo.node import Node, Pod
from k8stopo.spec import ClusterSpec, SpecError

CALICO = ["calico-bgp", "calico-ipip", "calico-vxlan"]


cluster = shared(*CALICO, nodes=2, pods_per_node=2)


def ping(src: Node | Pod, dst: Node | Pod, *args: str) -> bool:
    return src.run(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", *args, dst.ip],
                   check=False).returncode == 0


def rule_packets(node: Node, table: str, chain: str, needle: str) -> int:
    """Packet counter of the one rule of ``chain`` whose listing contains ``needle``."""
    listing = node.output(["iptables", "-t", table, "-L", chain, "-v", "-n", "-x"])
    hits = [l for l in listing.splitlines() if needle in l]
    assert len(hits) == 1, listing
    return int(hits[0].split()[0])


@pytest.mark.requires_root
def test_felix_chains_exist_without_any_policy(cluster: Cluster) -> None:
    for node in cluster.nodes:
        saved = node.output(["iptables-save"])
        assert "-A PREROUTING -m comment --comment \"cali: Calico raw prerouting\" " \
               "-j cali-PREROUTING" in saved
        assert "-A cali-PREROUTING -m mark --mark 0x80000/0x80000 -m rpfilter --validmark " \
               "--invert -j DROP" in saved
        assert "-A cali-FORWARD -i cali+ -j cali-from-wl-dispatch" in saved
        assert "-A cali-pri-kns.default -j MARK --set-xmark 0x10000/0x10000" in saved
        for pod in node.pods:
            iface = workload_iface(pod)
            assert f"-A cali-from-wl-dispatch -i {iface} -g cali-fw-{iface}" in saved
            assert f"-A cali-to-wl-dispatch -o {iface} -g cali-tw-{iface}" in saved
            for chain in (f"cali-tw-{iface}", f"cali-fw-{iface}"):
                assert f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" in saved
                assert f"-A {chain} -m conntrack --ctstate INVALID -j DROP" in saved
                assert f"-A {chain} -m comment --comment \"DROP if no profiles matched\" " \
                       f"-j DROP" in saved
        # the dispatch chains end by dropping unknown interfaces, after every workload
        dispatch = [l for l in saved.splitlines() if l.startswith("-A cali-from-wl-dispatch")]
        assert len(dispatch) == len(node.pods) + 1 and "Unknown interface" in dispatch[-1]


@pytest.mark.requires_root
def test_pod_traffic_walks_the_workload_chains(cluster: Cluster) -> None:
    """A new connection from a pod to a pod on another node is accepted by the sender's
    cali-fw profile and the receiver's cali-tw profile (their accept-mark rules count it)."""
    a, b = cluster.pod("pod-n1-0"), cluster.pod("pod-n2-1")
    fw, tw = f"cali-fw-{workload_iface(a)}", f"cali-tw-{workload_iface(b)}"
    before = (rule_packets(a.node, "filter", fw, "cali-pro-kns.default"),
              rule_packets(b.node, "filter", tw, "cali-pri-kns.default"))
    assert ping(a, b)
    after = (rule_packets(a.node, "filter", fw, "cali-pro-kns.default"),
             rule_packets(b.node, "filter", tw, "cali-pri-kns.default"))
    assert after[0] > before[0] and after[1] > before[1]


@pytest.mark.requires_root
def test_a_spoofed_source_from_a_pod_is_dropped(cluster: Cluster, tmp_path: Path) -> None:
    """Felix's strict rpfilter in raw cali-PREROUTING: a pod sending with its neighbour's IP
    never reaches the wire, while the same pod with its own IP does."""
    a, victim, b = cluster.pod("pod-n1-0"), cluster.pod("pod-n1-1"), cluster.pod("pod-n2-0")
    n1 = cluster.node("n1")
    spoofed = str(victim.ip)
    drops = rule_packets(n1, "raw", "cali-PREROUTING", "rpfilter")
    a.run(["ip", "addr", "add", f"{spoofed}/32", "dev", "eth0"])
    try:
        with Capture(n1, n1.intf, tmp_path / "spoof.pcap", ["not", "arp"]) as cap:
            assert not ping(a, b, "-I", spoofed)
            assert ping(a, b)  # the control: the pod's own address goes through
    finally:
        a.run(["ip", "addr", "del", f"{spoofed}/32", "dev", "eth0"])
    assert rule_packets(n1, "raw", "cali-PREROUTING", "rpfilter") >= drops + 2
    assert not [p for p in cap.packets if spoofed in (p.src, p.inner_src)]
    assert [p for p in cap.packets if str(a.ip) in (p.src, p.inner_src)]


def test_workload_rules_take_policy_chains_with_felixs_mark_contract() -> None:
    """The interface the NetworkPolicy agent uses: policies before the profiles, a return
    on the accept mark after each, and a drop at the end of the tier."""
    pod = Pod(name="web", ip=ipaddress.IPv4Address("192.168.0.2"), pid=0, state=None,
              namespace="shop")
    lines = felix.workload_rules("caliabc", pod, ingress_policies=["cali-pi-_allowweb"])
    tw = [l for l in lines if l.startswith("-A cali-tw-caliabc")]
    jump = tw.index("-A cali-tw-caliabc -m mark --mark 0x0/0x20000 -j cali-pi-_allowweb")
    assert "Return if policy accepted" in tw[jump + 1] and "0x10000/0x10000" in tw[jump + 1]
    assert "End of tier default" in tw[jump + 2] and tw[jump + 2].endswith("-j DROP")
    assert tw[jump + 3] == "-A cali-tw-caliabc -j cali-pri-kns.shop"
    assert not [l for l in lines if l.startswith("-A cali-fw-caliabc") and "cali-pi-" in l]
    assert felix.limited_name("cali-pri-", "ksa.default.default") == "cali-pri-ksa.default.default"
    long = felix.limited_name("cali-pri-", "ksa.a-long-namespace.a-long-account")
    assert len(long) == 28 and long.startswith("cali-pri-_")


# -- IP-in-IP: the calico-ipip cluster of the tests above ---------------------------------
only_ipip = pytest.mark.parametrize("cluster", ["calico-ipip"], indirect=True)


@pytest.mark.requires_root
@only_ipip
def test_ipip_tunl0_routes_and_mtu(cluster: Cluster) -> None:
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    assert cluster.variant.datapath in ("ipip", "tc-bpf")
    assert f"{tunnel_address(n1)}/32" in n1.output(["ip", "-4", "-o", "addr", "show", "tunl0"])
    assert n1.link("tunl0")["mtu"] == 1480
    route = n1.output(["ip", "-4", "route", "show", str(n2.pod_cidr)])
    assert f"via {n2.ip} dev tunl0" in route and "onlink" in route and "proto bird" in route
    a, b = cluster.pod("pod-n1-0"), cluster.pod("pod-n2-0")
    assert a.link("eth0")["mtu"] == 1480
    assert ping(a, b, "-M", "do", "-s", "1452")  # 1480 - 20 (IP) - 8 (ICMP)
    assert not ping(a, b, "-M", "do", "-s", "1453")


@pytest.mark.requires_root
@only_ipip
def test_ipip_tcp_crosses_as_protocol_4_between_node_ips(cluster: Cluster, tmp_path: Path) -> None:
    """Large TCP (GSO super-packets included) is carried in IP protocol 4 from node to node,
    with the pods' own addresses inside."""
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    a, b = cluster.pod("pod-n1-0"), cluster.pod("pod-n2-0")
    with Capture(n1, n1.intf, tmp_path / "ipip.pcap", ["-s", "128", "not", "arp"]) as cap:
        m = measure.measure(a, b.ip, b, "tcp")
    assert m.peer_seen_by_server == str(a.ip)
    tcp = [p for p in cap.packets if p.inner_proto == 6]
    assert tcp and all(p.proto == 4 for p in tcp)
    assert {(p.src, p.dst, p.inner_src, p.inner_dst) for p in tcp} == {
        (str(n1.ip), str(n2.ip), str(a.ip), str(b.ip)), (str(n2.ip), str(n1.ip), str(b.ip), str(a.ip))}
    assert not [p for p in cap.packets if p.proto == 6 and p.src == str(a.ip)]


@pytest.mark.requires_root
def test_ipip_cross_subnet_encapsulates_only_towards_other_subnets(monkeypatch) -> None:
    """confd's CrossSubnet choice, made by BIRD's kernel filter: a peer whose next hop is on
    the node's own subnet is routed directly, any other through tunl0. The underlay is one
    segment, so each node is told its subnet is its /31: n2 and n3 share 172.20.0.2/31, n1
    is alone in 172.20.0.0/31."""
    monkeypatch.setattr(CalicoIPIP, "node_subnet", staticmethod(
        lambda node: ipaddress.ip_network(f"{node.ip}/31", strict=False)))
    with Cluster(ClusterSpec(cni="calico-ipip", nodes=3, pods_per_node=1,
                             ipip_mode="cross-subnet")) as c:
        n1, n2, n3 = c.nodes
        routes = {n.name: n.output(["ip", "-4", "route", "show", "proto", "bird"])
                  for n in c.nodes}
        assert f"{n3.pod_cidr} via {n3.ip} dev {n2.intf}" in routes["n2"]
        assert f"{n2.pod_cidr} via {n2.ip} dev {n3.intf}" in routes["n3"]
        for node, peer in ((n1, n2), (n1, n3), (n2, n1), (n3, n1)):
            assert f"{peer.pod_cidr} via {peer.ip} dev tunl0" in routes[node.name]
        with Capture(n2, n2.intf, Path(c.state.path("x.pcap")), ["icmp", "or", "ip", "proto", "4"]) as cap:
            assert ping(c.pod("pod-n2-0"), c.pod("pod-n3-0"))
            assert ping(c.pod("pod-n2-0"), c.pod("pod-n1-0"))
        same = [p for p in cap.packets if {p.src, p.inner_src} & {str(c.pod("pod-n3-0").ip)}]
        assert same and all(p.proto == 1 for p in same)
        other = [p for p in cap.packets if str(c.pod("pod-n1-0").ip) in (p.src, p.inner_src)]
        assert other and all(p.proto == 4 and p.src == str(n1.ip) for p in other)


@pytest.mark.requires_root
def test_ipip_cross_subnet_on_one_segment_does_not_encapsulate(tmp_path: Path) -> None:
    with Cluster(ClusterSpec(cni="calico-ipip", nodes=2, pods_per_node=1,
                             ipip_mode="cross-subnet")) as c:
        n1, n2 = c.nodes
        assert f"{n2.pod_cidr} via {n2.ip} dev {n1.intf}" in n1.output(
            ["ip", "-4", "route", "show", "proto", "bird"])
        a, b = c.pod("pod-n1-0"), c.pod("pod-n2-0")
        assert a.link("eth0")["mtu"] == 1480  # Calico still sizes pods for the tunnel
        with Capture(n1, n1.intf, tmp_path / "x.pcap", ["not", "arp"]) as cap:
            assert ping(a, b)
        assert [p for p in cap.packets if (p.src, p.dst, p.proto) == (str(a.ip), str(b.ip), 1)]
        assert not [p for p in cap.packets if p.proto == 4]


# -- VXLAN -----------------------------------------------------------------------------
@pytest.mark.requires_root
def test_vxlan_is_felixs_device_with_no_bird_and_untracked_outer_udp(cluster: Cluster) -> None:
    if cluster.spec.cni != "calico-vxlan":
        pytest.skip("calico-vxlan only")
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    link = n1.link("vxlan.calico")
    assert link["mtu"] == 1450
    details = n1.output(["ip", "-d", "link", "show", "vxlan.calico"])
    assert "vxlan id 4096" in details and "dstport 4789" in details and "nolearning" in details
    mac2 = n2.link("vxlan.calico")["address"]
    assert f"{mac2} dst {n2.ip}" in n1.output(["bridge", "fdb", "show", "dev", "vxlan.calico"])
    assert f"{tunnel_address(n2)} lladdr {mac2} PERMANENT" in n1.output(
        ["ip", "neigh", "show", "dev", "vxlan.calico"])
    assert f"{n2.pod_cidr} via {tunnel_address(n2)} dev vxlan.calico" in n1.output(
        ["ip", "route", "show", str(n2.pod_cidr)])
    assert not [p for p in cluster.state.data["pids"] if p["what"].startswith("bird@")]
    before = rule_packets(n1, "raw", "cali-OUTPUT", "NOTRACK")
    assert ping(cluster.pod("pod-n1-0"), cluster.pod("pod-n2-0"))
    assert rule_packets(n1, "raw", "cali-OUTPUT", "NOTRACK") >= before + 2


# -- route reflectors ------------------------------------------------------------------
@pytest.mark.requires_root
@pytest.mark.parametrize("reflectors,sessions", [(1, [3, 1, 1, 1]), (2, [3, 3, 2, 2])])
def test_route_reflectors_carry_every_block(reflectors: int, sessions: list[int]) -> None:
    spec = ClusterSpec(cni="calico-bgp", nodes=4, pods_per_node=1, bgp="rr",
                       route_reflectors=reflectors)
    with Cluster(spec) as c:
        for node, expected in zip(c.nodes, sessions):
            # routes can be complete through one reflector while the session to the other
            # still connects (BIRD's connect delay), so give every session a few seconds
            deadline = time.monotonic() + 15
            while True:
                protocols = c.variant.birdc(node, "show", "protocols")
                bgp = [l for l in protocols.splitlines() if l.startswith(("Node_", "Mesh_"))]
                if all("Established" in l for l in bgp) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert len(bgp) == expected and all("Established" in l for l in bgp), protocols
            assert all(l.startswith("Node_") for l in bgp)
            routes = node.output(["ip", "-4", "route", "show", "proto", "bird"])
            for peer in c.nodes:
                if peer is not node:  # reflection keeps the originating node as next hop
                    assert f"{peer.pod_cidr} via {peer.ip}" in routes
            conf = c.variant.bird_config(node)
            is_reflector = node.index < reflectors
            assert conf.count("rr client;") == (len(c.nodes) - reflectors if is_reflector else 0)
            # Calico's kernel protocol, plus a netlink buffer no burst of routes overflows
            assert "scan time 2;" in conf and "netlink rx buffer 16777216;" in conf
        assert ping(c.pod("pod-n3-0"), c.pod("pod-n4-0"))
        assert c.variant.birds["n1"].log == c.state.dir / "daemons" / "bird_n1.log"
        assert "Started" in c.variant.birds["n1"].read_log()
        assert c.variant.netlink_drops() == []


@pytest.mark.requires_root
def test_birds_start_reflectors_first_then_in_batches_each_ready_before_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every config is checked before the first BIRD starts; the reflector starts alone,
    then the clients a batch at a time, each BIRD's control socket greeting before the next
    batch starts; and the blocks still reach every node."""
    monkeypatch.setattr(calico, "START_BATCH", 2)
    seen: list[tuple[list[str], list[str], list[str]]] = []
    original = Daemons.start

    def start(self: Daemons, *groups, timeout=None) -> None:
        if groups and groups[0] and groups[0][0].NAME == "bird":
            # at each group's start: which BIRDs answer on their control sockets already
            for i, group in enumerate(groups):
                original(self, group, timeout=timeout)
                seen.append(([b.where.name for b in group],
                             [b.where.name for g in groups[:i + 1] for b in g if b.ready()],
                             [b.where.name for g in groups for b in g if not b.checked]))
            return
        original(self, *groups, timeout=timeout)

    monkeypatch.setattr(Daemons, "start", start)
    with Cluster(ClusterSpec(cni="calico-bgp", nodes=5, pods_per_node=1, bgp="rr")) as c:
        assert [group for group, _, _ in seen] == [["n1"], ["n2", "n3"], ["n4", "n5"]]
        for group, ready, unchecked in seen:
            assert unchecked == []  # every config checked before any BIRD started
            assert group[-1] in ready and set(ready) >= {"n1", *group}
        assert ping(c.pod("pod-n4-0"), c.pod("pod-n5-0"))


def test_bgp_options_are_checked_at_the_edge() -> None:
    for spec in (ClusterSpec(cni="calico-bgp", bgp="full"),
                 ClusterSpec(cni="calico-bgp", nodes=2, bgp="rr", route_reflectors=2),
                 ClusterSpec(cni="calico-bgp", route_reflectors=2),
                 ClusterSpec(cni="calico-vxlan", bgp="rr"),
                 ClusterSpec(cni="flannel-vxlan", ipip_mode="cross-subnet"),
                 ClusterSpec(cni="calico-ipip", ipip_mode="never")):
        with pytest.raises(SpecError):
            Cluster(spec)


def test_bench_gives_calicos_options_only_to_the_variants_that_honour_them() -> None:
    from k8stopo.cni import VARIANTS
    from k8stopo.spec import BenchSpec
    bench = BenchSpec(cnis=("calico-bgp", "flannel-vxlan"), scenarios=("host-to-host",),
                      protocols=("tcp",), nodes=3, bgp="rr", ipip_mode="cross-subnet")
    specs = {cni: bench.cluster(cni, VARIANTS[cni].options)
             for cni in ("calico-bgp", "calico-ipip", "flannel-vxlan")}
    assert (specs["calico-bgp"].bgp, specs["calico-bgp"].ipip_mode) == ("rr", "always")
    assert (specs["calico-ipip"].bgp, specs["calico-ipip"].ipip_mode) == ("rr", "cross-subnet")
    assert (specs["flannel-vxlan"].bgp, specs["flannel-vxlan"].ipip_mode) == ("mesh", "always")
    for cni, spec in specs.items():
        Cluster(spec)  # accepted: nothing a variant does not honour reaches it


@pytest.mark.parametrize("args,message", [
    (["up", "--cni", "flannel-vxlan", "--bgp", "rr"], "--bgp does not apply to flannel-vxlan"),
    (["up", "--cni", "calico-bgp", "--bgp", "reflect"], "--bgp must be one of mesh, rr"),
    (["up", "--cni", "calico-ipip", "--ipip-mode", "never"], "--ipip-mode must be one of"),
    (["bench", "--cni", "host", "--bgp", "rr", "--out", "x.csv"],
     "--bgp applies to none of the requested variants"),
])
@pytest.mark.requires_root
def test_calico_flags_refuse_bad_input_with_one_line(args: list[str], message: str,
                                                     tmp_path: Path) -> None:
    from conftest import k8stopo
    result = k8stopo(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []
