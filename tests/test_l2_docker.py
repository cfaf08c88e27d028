"""macvlan, Docker's bridge and overlay, the routed underlay: what only these show."""
from __future__ import annotations

import csv
import ipaddress
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clusters import shared

from k8stopo import pods, runstate
from k8stopo.bench import not_measured
from k8stopo.capture import Capture
from k8stopo.cluster import Cluster
from k8stopo.cni import VARIANTS
from k8stopo.cni.docker import CONTAINER_PORT, HOST_PORT, docker_mac
from k8stopo.node import Node, Pod
from k8stopo.spec import ClusterSpec, SpecError

from conftest import assert_gone, k8stopo


def ping(src: Node | Pod, dst: Node | Pod) -> bool:
    return src.run(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", dst.ip],
                   check=False).returncode == 0


def mac(endpoint: Pod | Node, dev: str) -> str:
    return endpoint.link(dev)["address"]


# -- macvlan ----------------------------------------------------------------------------------
macvlan = shared("macvlan", nodes=3, pods_per_node=2)


@pytest.mark.requires_root
def test_macvlan_a_node_cannot_reach_its_own_pods_but_other_nodes_can(macvlan: Cluster) -> None:
    """The kernel keeps a macvlan parent and its children apart (libnetwork docs/macvlan.md).
    The pings run side by side: each one that must fail waits out its whole timeout."""
    n1, n2 = macvlan.node("n1"), macvlan.node("n2")
    pairs = [(a, b) for pod in n1.pods for a, b in ((n1, pod), (pod, n1), (n2, pod), (pod, n2))]
    with ThreadPoolExecutor(len(pairs)) as pool:
        reached = dict(zip(pairs, pool.map(lambda pair: ping(*pair), pairs)))
    for pod in n1.pods:
        assert not reached[(n1, pod)], f"n1 reached its own macvlan pod {pod.name}"
        assert not reached[(pod, n1)]
        assert reached[(n2, pod)] and reached[(pod, n2)]


@pytest.mark.requires_root
def test_macvlan_pods_sit_on_their_nodes_segment_with_the_segments_gateway(macvlan: Cluster) -> None:
    segment = ipaddress.IPv4Network("172.20.0.0/16")
    for node in macvlan.nodes:
        assert node.pod_cidr == ipaddress.IPv4Network(f"172.20.{128 + node.index}.0/24")
        for pod in node.pods:
            addr = json.loads(pod.output(["ip", "-j", "addr", "show", "eth0"]))[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addr if a["family"] == "inet"] == \
                [(str(pod.ip), segment.prefixlen)]
            assert pod.output(["ip", "route", "show", "default"]).startswith(
                "default via 172.20.255.254 dev eth0")
        # no agent: nothing on the node but its own NIC
        assert node.output(["iptables-save", "-t", "nat"]).count("-A ") == 0


@pytest.mark.requires_root
def test_macvlan_pods_own_macs_cross_the_underlay(macvlan: Cluster, tmp_path: Path) -> None:
    a, b = macvlan.pod("pod-n1-0"), macvlan.pod("pod-n2-0")
    n2 = macvlan.node("n2")
    macs = {mac(a, "eth0"), mac(b, "eth0")}
    assert mac(macvlan.node("n1"), "n1-eth0") not in macs
    with Capture(n2, n2.intf, tmp_path / "macvlan.pcap", ["icmp"]) as cap:
        assert ping(a, b)
    frames = [(p.eth_src, p.eth_dst) for p in cap.packets if (p.src, p.dst) == (str(a.ip), str(b.ip))]
    assert frames and set(frames) == {(mac(a, "eth0"), mac(b, "eth0"))}
    assert not [p for p in cap.packets if p.vni is not None or p.proto == 4]


def test_macvlan_refuses_a_pod_cidr_off_the_underlay() -> None:
    with pytest.raises(SpecError, match="underlay segment"):
        Cluster(ClusterSpec(cni="macvlan", pod_cidr="10.244.0.0/16"))


# -- docker-bridge ----------------------------------------------------------------------------
bridge = shared("docker-bridge", nodes=3, pods_per_node=2)


@pytest.mark.requires_root
def test_docker0_has_the_same_range_and_dockers_rules_on_every_node(bridge: Cluster) -> None:
    for node in bridge.nodes:
        addr = json.loads(node.output(["ip", "-j", "addr", "show", "docker0"]))[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addr if a["family"] == "inet"] == \
            [("172.17.0.1", 16)]
        assert [str(p.ip) for p in node.pods] == ["172.17.0.2", "172.17.0.3"]
        nat = node.output(["iptables-save", "-t", "nat"])
        assert "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" in nat
        assert "-A DOCKER -i docker0 -j RETURN" in nat
        # the portmap plugin's DNAT for the node's first pod, nothing for the second
        first = node.pods[0]
        assert f"--dport {HOST_PORT} -j DNAT --to-destination {first.ip}:{CONTAINER_PORT}" in nat
        assert nat.count("-j DNAT") == 2  # tcp and udp
        assert node.pods[0].netconf["plugins"][1]["type"] == "portmap"


@pytest.mark.requires_root
def test_a_hostport_is_reached_across_nodes_with_the_client_rewritten_to_its_node(
        bridge: Cluster, tmp_path: Path) -> None:
    """pod-to-hostport: pod on n1 -> n2's IP at the hostPort; the server sees n1's IP and
    only node IPs cross the wire."""
    client, server = bridge.pod("pod-n1-0"), bridge.pod("pod-n2-0")
    n1, n2 = bridge.node("n1"), bridge.node("n2")
    listener = server.spawn(["socat", f"TCP-LISTEN:{CONTAINER_PORT},reuseaddr",
                             "SYSTEM:echo $SOCAT_PEERADDR"], what="hostport server")
    try:
        for _ in range(100):
            if server.output(["ss", "-Hltn", "sport", "=", f":{CONTAINER_PORT}"]).strip():
                break
            time.sleep(0.02)
        with Capture(n1, n1.intf, tmp_path / "hostport.pcap", ["tcp", "port", str(HOST_PORT)]) as cap:
            seen = client.run(["socat", "-T", "3", "-", f"TCP:{n2.ip}:{HOST_PORT},connect-timeout=3"],
                              input="", check=False).stdout.strip()
    finally:
        server.stop(listener)
    assert seen == str(n1.ip)
    assert cap.packets and {(p.src, p.dst) for p in cap.packets} <= {
        (str(n1.ip), str(n2.ip)), (str(n2.ip), str(n1.ip))}


@pytest.mark.requires_root
def test_a_pod_ip_of_another_node_is_a_local_address(bridge: Cluster, tmp_path: Path) -> None:
    """pod-to-pod-cross-node by pod IP is impossible by design: the packet never leaves n1."""
    a, b = bridge.pod("pod-n1-0"), bridge.pod("pod-n2-1")
    n1 = bridge.node("n1")
    with Capture(n1, n1.intf, tmp_path / "none.pcap", ["icmp"]) as cap:
        a.run(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", b.ip], check=False)
        assert ping(a, bridge.node("n2"))  # the control: ICMP that does leave n1 is seen
    assert cap.packets and not [p for p in cap.packets if str(b.ip) in (p.src, p.dst)]
    assert b.ip in ipaddress.IPv4Network("172.17.0.0/16")
    assert "pod-to-pod-cross-node" in not_measured(VARIANTS["docker-bridge"],
                                                   ("pod-to-pod-cross-node",), nodes=2)


# -- docker-overlay ---------------------------------------------------------------------------
@pytest.mark.requires_root
def test_docker_overlay_sandbox_holds_br0_and_vxlan0_and_peerdb_entries(tmp_path: Path) -> None:
    with Cluster(ClusterSpec(cni="docker-overlay", nodes=3, pods_per_node=1)) as c:
        prefix, pids = c.state.prefix, list(c.state.data["pids"])
        n1 = c.node("n1")
        ns = c.variant.netns(n1)
        assert ns == f"{prefix}-ov-n1" and ns in c.state.data["netns"]
        vx = json.loads(n1.output(["ip", "-n", ns, "-j", "-d", "link", "show", "vxlan0"]))[0]
        data = vx["linkinfo"]["info_data"]
        assert (data["id"], data["port"], vx["mtu"]) == (4096, 4789, 1450)
        assert data["learning"] and data["proxy"] and data["l2miss"] and data["l3miss"]
        assert vx["master"] == "br0"
        br0 = json.loads(n1.output(["ip", "-n", ns, "-j", "addr", "show", "br0"]))[0]
        assert [a["local"] for a in br0["addr_info"] if a["family"] == "inet"] == ["10.0.0.1"]
        # nothing of the overlay in the node's own namespace but vxlan0's UDP socket
        assert "br0" not in n1.output(["ip", "-o", "link"])
        assert n1.output(["ss", "-Hlun", "sport", "=", ":4789"]).strip()
        neigh = n1.output(["ip", "-n", ns, "neigh", "show", "dev", "vxlan0"])
        fdb = n1.output(["bridge", "-n", ns, "fdb", "show", "dev", "vxlan0"])
        for remote in (c.pod("pod-n2-0"), c.pod("pod-n3-0")):
            assert f"{remote.ip} lladdr {docker_mac(remote.ip)} PERMANENT" in neigh
            assert f"{docker_mac(remote.ip)} dst {remote.node.ip} link-netnsid 0 self permanent" \
                in fdb  # the VTEP's socket lives in the node's namespace (netnsid 0 from here)
        a, b = c.pod("pod-n1-0"), c.pod("pod-n3-0")
        assert mac(a, "eth0") == docker_mac(a.ip) and a.link("eth0")["mtu"] == 1450
        assert a.output(["ip", "route", "show", "default"]).startswith(
            "default via 172.18.0.1 dev eth1")  # docker_gwbridge
        # the largest unfragmented ICMP payload crosses: 1450 - 28
        assert a.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", b.ip],
                     check=False).returncode == 0
    assert_gone(prefix, pids)


# -- routed underlay --------------------------------------------------------------------------
@pytest.mark.requires_root
def test_routed_underlay_puts_nodes_on_two_subnets_behind_a_router() -> None:
    with Cluster(ClusterSpec(cni="host", nodes=3, pods_per_node=0, underlay="routed")) as c:
        prefix, pids = c.state.prefix, list(c.state.data["pids"])
        assert [str(n.ip) for n in c.nodes] == ["172.20.0.1", "172.20.0.2", "172.20.128.3"]
        n1, n3 = c.node("n1"), c.node("n3")
        assert n1.output(["ip", "route", "show", "default"]).startswith(
            "default via 172.20.127.254")
        assert n3.output(["ip", "route", "show", "default"]).startswith(
            "default via 172.20.255.254")
        trace = n1.output(["ip", "route", "get", str(n3.ip)])
        assert "via 172.20.127.254" in trace
        # TTL 64 leaves n1 and arrives decremented by the router's hop
        out = n1.output(["ping", "-n", "-c", "1", "-W", "2", str(n3.ip)])
        assert "ttl=63" in out
        assert "ttl=64" in n1.output(["ping", "-n", "-c", "1", "-W", "2", "172.20.0.2"])
        assert c.caveats() == []
    assert_gone(prefix, pids)


routed = shared("flannel-vxlan", "docker-overlay", "macvlan", "calico-bgp", nodes=3,
                pods_per_node=1, underlay="routed")


@pytest.mark.requires_root
def test_routed_underlay_variants_cross_the_router(routed: Cluster) -> None:
    a = routed.pod("pod-n1-0")
    assert ping(a, routed.pod("pod-n3-0"))  # across the router
    assert ping(a, routed.pod("pod-n2-0"))  # on the same subnet
    assert routed.caveats() == []
    assert not not_measured(VARIANTS[routed.spec.cni], ("pod-to-pod-cross-node",), 3, "routed")


@pytest.mark.requires_root
def test_routed_underlay_host_gw_cannot_reach_pods_on_the_other_subnet() -> None:
    with Cluster(ClusterSpec(cni="flannel-host-gw", nodes=3, pods_per_node=1,
                             underlay="routed")) as c:
        a = c.pod("pod-n1-0")
        assert ping(a, c.pod("pod-n2-0"))  # same subnet: the peer is on-link
        assert not ping(a, c.pod("pod-n3-0"))  # other subnet: no route but the default
        routes = c.node("n1").output(["ip", "route"])
        assert f"{c.node('n2').pod_cidr} via 172.20.0.2" in routes
        assert str(c.node("n3").pod_cidr) not in routes
        assert len(c.caveats()) == 1 and "one L2 segment" in c.caveats()[0]
        assert VARIANTS["flannel-host-gw"].routed_caveat in not_measured(
            VARIANTS["flannel-host-gw"], ("pod-to-pod-cross-node",), 3, "routed")[
                "pod-to-pod-cross-node"]


@pytest.mark.requires_root
@pytest.mark.parametrize("routed", ["calico-bgp"], indirect=True)
def test_routed_underlay_calico_bgp_crosses_because_the_router_peers_bgp(routed: Cluster,
                                                                         tmp_path: Path) -> None:
    """Calico's L3-fabric model: every node peers with its subnet's router (a route reflector
    in AS 64512), which learns each block with the node's own address as next hop; pod
    traffic then crosses the router unencapsulated, pod IPs on the wire."""
    n1, n3, r1 = routed.node("n1"), routed.node("n3"), routed.underlay.router
    assert r1 is not None and routed.variant.birds[r1.name].poll() is None
    protocols = routed.variant.birdc(n1, "show", "protocols")
    assert any(l.startswith("Node_172_20_127_254") and "Established" in l
               for l in protocols.splitlines()), protocols
    routes = r1.output(["ip", "route", "show", "proto", "bird"])
    for node in routed.nodes:
        assert f"{node.pod_cidr} via {node.ip}" in routes
    assert f"{n3.pod_cidr} via 172.20.127.254" in n1.output(["ip", "route"])
    a, b = routed.pod("pod-n1-0"), routed.pod("pod-n3-0")
    with Capture(n3, n3.intf, tmp_path / "routed.pcap", ["icmp"]) as cap:
        assert ping(a, b)
    assert [p for p in cap.packets if (p.src, p.dst) == (str(a.ip), str(b.ip))]
    assert routed.caveats() == []
    with Cluster(ClusterSpec(cni="calico-bgp", nodes=2, pods_per_node=1)) as c:
        assert c.underlay.router is None and "Node_" not in c.variant.bird_config(c.node("n1"))


@pytest.mark.requires_root
def test_underlay_is_checked_before_anything_exists() -> None:
    before = set(runstate.root_links())
    r = k8stopo("up", "--cni", "host", "--underlay", "ring")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "underlay 'ring'" in r.stderr
    assert set(runstate.root_links()) == before
    with pytest.raises(SpecError, match="no room"):
        Cluster(ClusterSpec(cni="host", nodes=3, underlay="routed",
                            underlay_cidr="172.20.0.0/29"))


# -- CNI configuration lists ------------------------------------------------------------------
def test_a_conflist_gives_each_plugin_the_lists_name_and_its_capabilities_only() -> None:
    conflist = {"cniVersion": "0.4.0", "name": "net", "plugins": [
        {"type": "bridge", "bridge": "docker0"},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    runtime = {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}],
               "bandwidth": {"ingressRate": 1}}
    bridge, portmap = pods.plugin_confs(conflist, runtime)
    assert bridge == {"cniVersion": "0.4.0", "name": "net", "type": "bridge", "bridge": "docker0"}
    assert portmap["runtimeConfig"] == {"portMappings": runtime["portMappings"]}
    single = {"cniVersion": "0.3.1", "name": "x", "type": "ptp"}
    assert pods.plugin_confs(single, runtime) == [single]


def scenarios(csv_file: Path) -> set[str]:
    """The scenarios of a bench CSV's rows (the command column names them all)."""
    with csv_file.open() as f:
        return {row["scenario"] for row in csv.DictReader(f)}


@pytest.mark.requires_root
def test_bench_marks_scenarios_impossible_by_design_instead_of_failing(tmp_path: Path) -> None:
    out = tmp_path / "bench.csv"
    r = k8stopo("bench", "--cni", "docker-bridge", "--scenarios",
                "host-to-host,pod-to-pod-cross-node", "--protocols", "icmp", "--duration", "1",
                "--repeat", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("impossible by design") == 1, r.stderr
    assert "pod IPs are not routable from other nodes" in r.stderr
    assert scenarios(out) == {"host-to-host"}


@pytest.mark.requires_root
def test_bench_on_the_routed_underlay_says_why_host_gw_cannot_cross(tmp_path: Path) -> None:
    out = tmp_path / "routed.csv"
    r = k8stopo("bench", "--cni", "flannel-host-gw", "--underlay", "routed", "--scenarios",
                "pod-to-pod-same-node,pod-to-pod-cross-node,node-to-pod", "--protocols", "icmp",
                "--duration", "1", "--repeat", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    notes = [l for l in r.stderr.splitlines() if "not measured:" in l]  # one per scenario
    assert len(notes) == 2 and all("one L2 segment" in l for l in notes), r.stderr
    assert scenarios(out) == {"pod-to-pod-same-node"}


# -- teardown of a large cluster --------------------------------------------------------------
@pytest.mark.requires_root
@pytest.mark.parametrize("cni", ["flannel-vxlan", "docker-overlay"])
def test_the_batch_teardown_of_a_large_cluster_takes_every_pods_links(cni: str,
                                                                       monkeypatch) -> None:
    """Above CNI_DEL_UP_TO pods, each node drops its pods' links in one go (the variant's
    detach_all); Docker's overlay keeps half of each pair in its own namespace."""
    from k8stopo import cluster as cluster_module
    monkeypatch.setattr(cluster_module, "CNI_DEL_UP_TO", 0)  # as if the cluster were large
    left: dict[str, list[str]] = {}
    original = VARIANTS[cni].detach_all

    def detach_all(self, node: Node) -> None:
        original(self, node)
        netns = [["ip", "-n", self.netns(node)]] if cni == "docker-overlay" else []
        left[node.name] = [link["ifname"] for cmd in [["ip"], *netns] for link in json.loads(
            node.output([*cmd, "-j", "link", "show", "type", "veth"]) or "[]")]

    monkeypatch.setattr(VARIANTS[cni], "detach_all", detach_all)
    with Cluster(ClusterSpec(cni=cni, nodes=2, pods_per_node=2)) as c:
        prefix, pids = c.state.prefix, list(c.state.data["pids"])
    assert left == {"n1": ["n1-eth0"], "n2": ["n2-eth0"]}
    assert_gone(prefix, pids)
