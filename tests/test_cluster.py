"""Behaviour of real clusters: addressing, reachability, no NAT, wire format, BGP, teardown."""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from k8stopo import measure, netlink, pods, proc, runstate
from k8stopo.capture import Capture
from k8stopo.cluster import Cluster
from k8stopo.cni import VARIANTS
from k8stopo.cni.calico import Calico, CalicoBird, workload_iface
from k8stopo.cni.docker import DockerBridge, DockerOverlay
from k8stopo.cni.macvlan import Macvlan
from k8stopo.node import Node, Pod
from k8stopo.pods import plugin_confs
from k8stopo.spec import ClusterSpec

from conftest import assert_gone

pytestmark = pytest.mark.requires_root  # clusters, or commands that need root

ALL = list(VARIANTS)


@pytest.fixture(scope="module", params=ALL)
def cluster(request: pytest.FixtureRequest):
    with Cluster(ClusterSpec(cni=request.param, nodes=3, pods_per_node=2)) as c:
        yield c


def ping(src: Node | Pod, dst: Node | Pod) -> bool:
    return src.run(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", dst.ip],
                   check=False).returncode == 0


def by_design(cluster: Cluster, src: Node | Pod, dst: Node | Pod) -> bool:
    """Whether the real project's datapath lets ``src`` reach ``dst`` (the capability flags)."""
    v = cluster.variant
    src_node = src if isinstance(src, Node) else src.node
    if isinstance(dst, Node):  # a pod to a node (only pods are sources here)
        return dst is not src_node or v.reaches_own_node
    if dst.node is src_node:
        return isinstance(src, Pod) or (v.reaches_own_node and v.nodes_reach_pods)
    return v.pod_ip_routable and (isinstance(src, Pod) or v.nodes_reach_pods)


def answered_by(src: Node | Pod, dst: Node | Pod, port: int = 7007) -> str:
    """Who answers a TCP connection from ``src`` to ``dst``'s IP: ``dst`` runs a server that
    says its name; "" when nothing answers."""
    server = dst.spawn(["socat", f"TCP-LISTEN:{port},reuseaddr,fork", f"SYSTEM:echo {dst.name}"],
                       what=f"name server@{dst.name}")
    try:
        for _ in range(100):  # until it listens
            if dst.output(["ss", "-Hltn", "sport", "=", f":{port}"]).strip():
                break
            time.sleep(0.02)
        return src.run(["socat", "-T", "2", "-", f"TCP:{dst.ip}:{port},connect-timeout=2"],
                       input="", check=False).stdout.strip()
    finally:
        dst.stop(server)


def test_pod_ips_are_unique_and_inside_their_node_range(cluster: Cluster) -> None:
    ips = [pod.ip for pod in cluster.pods]
    assert len(ips) == 6
    if not cluster.variant.pod_ip_routable:  # docker0's range is the same on every node
        assert all(len({p.ip for p in n.pods}) == 2 for n in cluster.nodes)
    elif not cluster.variant.host_network:
        assert len(set(ips)) == 6
    for node in cluster.nodes:
        for pod in node.pods:
            if cluster.variant.host_network:
                assert pod.ip == node.ip
            else:
                assert node.pod_cidr is not None and pod.ip in node.pod_cidr
                assert pod.ip != node.pod_cidr.network_address


def test_every_pod_reaches_every_pod_and_node(cluster: Cluster) -> None:
    """Every pair the real datapath allows, from every pod and node (the next test tries
    the others); pinged eight at a time."""
    ends: list[Node | Pod] = [*cluster.pods, *cluster.nodes]
    pairs = [(src, dst) for src in ends for dst in ends
             if dst is not src and not (isinstance(src, Node) and isinstance(dst, Node))
             and by_design(cluster, src, dst)]
    assert len(pairs) >= len(cluster.pods)  # every pod reaches at least its own node's others
    with ThreadPoolExecutor(8) as pool:
        reached = list(pool.map(lambda pair: ping(*pair), pairs))
    assert not [f"{s.name} -> {d.name} ({d.ip})" for (s, d), ok in zip(pairs, reached) if not ok]


def test_what_the_datapath_rules_out_is_really_out_of_reach(cluster: Cluster) -> None:
    """The pairs the capability flags rule out (a node to its own macvlan pods, a pod IP of
    another node's docker0, a node into Docker's overlay) never reach that very endpoint; a
    pair that is allowed, tried the same way, does (so the probe itself works)."""
    a = cluster.pod("pod-n1-0")
    candidates: list[tuple[Node | Pod, Node | Pod]] = [
        (a, o) for o in cluster.endpoints() if o is not a]
    candidates += [(n, p) for n in cluster.nodes for p in cluster.pods]
    ruled_out = [(s, d) for s, d in candidates if not by_design(cluster, s, d)]
    if not ruled_out:
        pytest.skip(f"{cluster.spec.cni} rules out no pair")
    # one pair of each kind ruled out (pod or node to a pod on its own or another node),
    # not merely the first few, which could all be of one kind
    kinds = {(type(s), (s if isinstance(s, Node) else s.node) is d.node): (s, d)
             for s, d in reversed(ruled_out) if isinstance(d, Pod)}
    for src, dst in [*kinds.values(), *(p for p in ruled_out if not isinstance(p[1], Pod))]:
        assert answered_by(src, dst) != dst.name, f"{src.name} reached {dst.name} ({dst.ip})"
    assert answered_by(a, cluster.pod("pod-n1-1")) == "pod-n1-1"


def test_server_sees_the_client_pods_own_ip(cluster: Cluster) -> None:
    if not cluster.variant.pod_ip_routable:
        pytest.skip(f"{cluster.spec.cni}: pod IPs do not cross nodes")
    client, server = cluster.pod("pod-n1-0"), cluster.pod("pod-n2-1")
    m = measure.measure(client, server.ip, server, "tcp")
    assert m.peer_seen_by_server == str(client.ip)


def test_pod_traffic_leaving_the_pod_network_is_masqueraded(cluster: Cluster) -> None:
    """flanneld's, Felix's and dockerd's masquerade rules: pod -> another node shows the
    node's IP; where the project has none (macvlan), the pod's own."""
    client, n2 = cluster.pod("pod-n1-0"), cluster.node("n2")
    m = measure.measure(client, n2.ip, n2, "tcp")
    expected = cluster.node("n1").ip if cluster.variant.masquerades else client.ip
    assert m.peer_seen_by_server == str(expected)


def test_containers_of_a_pod_share_localhost(cluster: Cluster, tmp_path: Path) -> None:
    pod, other = cluster.pod("pod-n2-0"), cluster.pod("pod-n3-0")
    got = tmp_path / "received"
    server = pod.spawn(["socat", "-u", "TCP-LISTEN:8080,bind=127.0.0.1,reuseaddr",
                        f"CREATE:{got}"], what="container web")
    try:
        pod.run(["socat", "-u", "STDIN", "TCP:127.0.0.1:8080,retry=20,interval=0.05"],
                input="hello from the sidecar\n")
        server.wait(5)
        assert got.read_text() == "hello from the sidecar\n"
    finally:
        pod.stop(server)
    if not cluster.variant.host_network:  # another pod has a localhost of its own
        assert other.run(["socat", "-u", "STDIN", "TCP:127.0.0.1:8080"], input="x",
                         check=False).returncode != 0


def test_same_node_pods_share_the_bridge_or_have_host_routes(cluster: Cluster) -> None:
    if cluster.variant.host_network:
        pytest.skip("hostNetwork pods have no pod network")
    node = cluster.node("n1")
    if isinstance(cluster.variant, Macvlan):  # children of the node's NIC, in bridge mode
        parent = node.link(node.intf)["ifindex"]
        for pod in node.pods:
            eth0 = json.loads(pod.output(["ip", "-j", "-d", "link", "show", "eth0"]))[0]
            assert eth0["linkinfo"]["info_kind"] == "macvlan"
            assert eth0["linkinfo"]["info_data"]["mode"] == "bridge"
            assert eth0["link_index"] == parent
        assert node.output(["ip", "-o", "link", "show", "type", "bridge"]).strip() == ""
    elif isinstance(cluster.variant, DockerOverlay):  # veths in br0 of the network's netns
        ports = json.loads(node.output(["ip", "-n", cluster.variant.netns(node), "-j", "link",
                                        "show", "master", "br0"]))
        assert sorted(p["ifname"] for p in ports) == ["veth0", "veth1", "vxlan0"]
    elif isinstance(cluster.variant, Calico):
        assert node.output(["ip", "-o", "link", "show", "type", "bridge"]).strip() == ""
        for pod in node.pods:
            route = node.output(["ip", "-4", "route", "show", f"{pod.ip}/32"])
            assert f"dev {workload_iface(pod)}" in route
            assert pod.output(["ip", "-4", "route", "show", "default"]).startswith(
                "default via 169.254.1.1 dev eth0")
            assert f"{pod.ip}/32" in pod.output(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    else:  # the bridge plugin (flannel's cni0, weave's weave, docker0): pods' veths are its
        # ports, it is their gateway
        conf = plugin_confs(node.pods[0].netconf, {})[0]
        bridge = conf["bridge"]
        ports = json.loads(node.output(["ip", "-j", "link", "show", "master", bridge]))
        pod_ports = [p for p in ports if "link_netnsid" in p]  # veths into pod namespaces
        assert len(pod_ports) == len(node.pods) == 2
        assert all(p["mtu"] == node.pods[0].mtu for p in pod_ports)
        # kubelet's CNIs turn hairpin on (a pod reaching itself through a Service); dockerd not
        assert conf["hairpinMode"] == (not isinstance(cluster.variant, DockerBridge))
        address = ipaddress.IPv4Address(json.loads(node.output(
            ["ip", "-j", "addr", "show", bridge]))[0]["addr_info"][0]["local"])
        assert node.pod_cidr is not None and address in node.pod_cidr
        for pod in node.pods:
            assert pod.output(["ip", "-4", "route", "show", "default"]).startswith(
                f"default via {address} dev eth0")


WIRE = {
    "flannel-vxlan": lambda p, a, b: p.proto == 17 and p.dport == 8472 and p.vni == 1
    and (p.inner_src, p.inner_dst) == (a, b),
    "flannel-udp": lambda p, a, b: p.proto == 17 and p.dport == 8285 and p.sport == 8285
    and (p.inner_src, p.inner_dst) == (a, b),
    "weave-fastdp": lambda p, a, b: p.proto == 17 and p.dport == 6784
    and p.vni == 1 | 2 << 12  # n1 -> n2: srcShortID | dstShortID << 12
    and (p.inner_src, p.inner_dst) == (a, b),
    "weave-sleeve": lambda p, a, b: p.proto == 17 and (p.sport, p.dport) == (6783, 6783)
    and p.inner_frames is not None and (p.inner_src, p.inner_dst) == (a, b),
    "flannel-host-gw": lambda p, a, b: p.proto == 1 and (p.src, p.dst) == (a, b),
    "calico-bgp": lambda p, a, b: p.proto == 1 and (p.src, p.dst) == (a, b),
    "calico-ipip": lambda p, a, b: p.proto == 4 and (p.inner_src, p.inner_dst) == (a, b)
    and p.inner_proto == 1,
    "calico-vxlan": lambda p, a, b: p.proto == 17 and p.dport == 4789 and p.vni == 4096
    and (p.inner_src, p.inner_dst) == (a, b),
    "host": lambda p, a, b: p.proto == 1 and (p.src, p.dst) == (a, b),
    "macvlan": lambda p, a, b: p.proto == 1 and (p.src, p.dst) == (a, b),
    "docker-overlay": lambda p, a, b: p.proto == 17 and p.dport == 4789 and p.vni == 4096
    and (p.inner_src, p.inner_dst) == (a, b),
    # docker-bridge: no pod IP crosses the wire (tests/test_l2_docker.py, hostPort capture)
}


def test_cross_node_traffic_has_the_variants_wire_format(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    if not cluster.variant.pod_ip_routable:
        pytest.skip(f"{cluster.spec.cni}: pod IPs do not cross nodes")
    a, b = cluster.pod("pod-n1-0"), cluster.pod("pod-n2-0")
    n1 = cluster.node("n1")
    with Capture(n1, n1.intf, tmp_path / "underlay.pcap", ["not", "arp"]) as cap:
        assert ping(a, b)
    matching = [p for p in cap.packets if WIRE[cluster.spec.cni](p, str(a.ip), str(b.ip))]
    assert len(matching) >= 2, cap.packets[:5]
    # nothing leaks unencapsulated where the variant encapsulates
    if cluster.variant.overhead:
        assert not [p for p in cap.packets if p.src == str(a.ip) or p.dst == str(a.ip)]


def test_bird_sessions_establish_and_every_node_learns_every_block(cluster: Cluster) -> None:
    if not isinstance(cluster.variant, CalicoBird):
        pytest.skip("BGP is Calico's (with BIRD)")
    for node in cluster.nodes:
        protocols = cluster.variant.birdc(node, "show", "protocols")
        sessions = [l for l in protocols.splitlines() if l.startswith("Mesh_")]
        assert len(sessions) == 2 and all("Established" in l for l in sessions), protocols
        routes = node.output(["ip", "-4", "route", "show", "proto", "bird"])
        for peer in cluster.nodes:
            if peer is not node:
                assert f"{peer.pod_cidr} via {peer.ip}" in routes
        assert f"blackhole {node.pod_cidr}" in routes
        # the sessions are real TCP connections on port 179 over the underlay
        bgp = node.output(["ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )"])
        peers = {line.split()[-1].rsplit(":", 1)[0] for line in bgp.splitlines()}
        assert peers == {str(p.ip) for p in cluster.nodes if p is not node}, bgp
        assert (cluster.variant.birds[node.name].poll() is None)


def test_the_cli_reaches_every_pod_by_name_in_the_pods_own_namespaces(cluster: Cluster) -> None:
    """Pods hold their namespaces with a pause process, no shell; the CLI's network gives each
    a shell when asked, inside the pod's network and mount namespaces, and only once."""
    net = cluster.cli_net()
    shells = 0
    for pod in cluster.pods:
        if pod.host_network:
            assert pod.name not in net
            continue
        host = net[pod.name]
        for ns in ("net", "mnt"):
            assert host.cmd(f"readlink /proc/self/ns/{ns}").strip() == \
                os.readlink(f"/proc/{pod.pid}/ns/{ns}")
        shells += 1
    assert cluster.cli_net() is net and len(net.hosts) == len(cluster.nodes) + 1 + shells


@pytest.mark.parametrize("cni", ALL)
def test_teardown_leaves_nothing(cni: str) -> None:
    with Cluster(ClusterSpec(cni=cni, nodes=2, pods_per_node=2)) as c:
        prefix, pids = c.state.prefix, list(c.state.data["pids"])
        assert len(pids) >= 3  # switch shell and 2 node shells at least
        assert not [l for l in runstate.root_links() if l.startswith(prefix)]
    assert_gone(prefix, pids)


@pytest.mark.parametrize("cni", ["flannel-vxlan", "calico-bgp", "calico-ipip", "flannel-udp",
                                 "weave-sleeve", "docker-overlay"])
def test_a_build_that_fails_midway_leaves_nothing(cni: str, monkeypatch) -> None:
    seen: dict = {}
    original = VARIANTS[cni].pod_added

    def fail_on_second_pod(self, pod):
        original(self, pod)
        seen["prefix"], seen["pids"] = self.cluster.state.prefix, list(self.cluster.state.data["pids"])
        if len(self.cluster.pods) >= 2:  # (the nodes' pods are attached at once)
            raise RuntimeError("injected failure")

    monkeypatch.setattr(VARIANTS[cni], "pod_added", fail_on_second_pod)
    with pytest.raises(RuntimeError, match="injected failure"):
        with Cluster(ClusterSpec(cni=cni, nodes=2, pods_per_node=2)):
            pass
    assert_gone(seen["prefix"], seen["pids"])


def test_jumbo_underlay_gives_vxlan_pods_mtu_minus_50() -> None:
    with Cluster(ClusterSpec(cni="flannel-vxlan", nodes=2, pods_per_node=1, mtu=9000)) as c:
        a, b = c.pod("pod-n1-0"), c.pod("pod-n2-0")
        assert a.mtu == 8950 and a.link("eth0")["mtu"] == 8950
        # the largest unfragmented ICMP payload: 8950 - 20 (IP) - 8 (ICMP)
        assert a.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "8922", b.ip],
                     check=False).returncode == 0
        assert a.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "8923", b.ip],
                     check=False).returncode != 0


def test_bgp_that_does_not_converge_in_time_fails_clearly_and_leaves_nothing(monkeypatch) -> None:
    from k8stopo import cluster as cluster_module
    monkeypatch.setattr(cluster_module, "READY_TIMEOUT", 0.0)  # BIRD cannot be that quick
    seen: dict = {}
    original = CalicoBird.wait_ready

    def record(self, timeout):
        seen["prefix"], seen["pids"] = self.cluster.state.prefix, list(self.cluster.state.data["pids"])
        original(self, timeout)

    monkeypatch.setattr(CalicoBird, "wait_ready", record)
    with pytest.raises(TimeoutError, match=r"BGP did not converge in 0s: \d of 2 nodes(.|\n)*"
                       r"`birdc show protocols` on n\d:\n.*BIRD"):
        with Cluster(ClusterSpec(cni="calico-bgp", nodes=2, pods_per_node=1)):
            pass
    assert any("bird@" in p["what"] for p in seen["pids"])
    assert_gone(seen["prefix"], seen["pids"])


@pytest.mark.parametrize("cni", ["flannel-vxlan", "flannel-host-gw", "calico-bgp", "calico-ipip",
                                 "calico-vxlan", "flannel-udp", "weave-fastdp", "weave-sleeve"])
def test_a_drop_rule_in_the_root_namespace_changes_nothing(cni: str) -> None:
    """The underlay switch is not in the root namespace, so the host's firewall (here a
    FORWARD DROP of every underlay and pod address, as a Docker host's policy would be)
    never sees a frame of the run; before, bridge-netfilter passed them all through it."""
    drops = [["FORWARD", "-s", net, "-m", "comment", "--comment", f"k8stopo-test-{os.getpid()}",
              "-j", "DROP"] for net in ("172.20.0.0/16", "10.244.0.0/16", "192.168.0.0/16",
                                        "10.32.0.0/12")]
    for rule in drops:
        proc.run(["iptables", "-I", *rule])
    try:
        with Cluster(ClusterSpec(cni=cni, nodes=2, pods_per_node=1)) as c:
            assert ping(c.pod("pod-n1-0"), c.pod("pod-n2-0"))
            assert ping(c.node("n1"), c.node("n2"))
        counters = proc.output(["iptables", "-L", "FORWARD", "-v", "-n", "-x"])
        hits = [l for l in counters.splitlines() if f"k8stopo-test-{os.getpid()}" in l]
        assert len(hits) == 4 and all(l.split()[0] == "0" for l in hits), hits
    finally:
        for rule in drops:
            proc.run(["iptables", "-D", *rule], check=False)


def test_netlink_steps_reach_the_kernel_and_are_logged_as_ip_commands(caplog) -> None:
    """A namespace's ip words go over its netlink socket: the kernel holds the result, the
    debug log shows the command a user would type, and a refused one fails (or, unchecked,
    is reported) as `ip` reports it."""
    state = runstate.RunState("test-netlink")
    try:
        pid = pods.hold(state, "nl").pid
        ns = netlink.at(pid, state.prefix)
        with caplog.at_level(logging.DEBUG, "k8stopo.netlink"):
            ns.batch("ip", [["link", "add", "va", "type", "veth", "peer", "name", "vb"],
                            ["addr", "add", "10.9.0.1/24", "dev", "va"],
                            ["link", "set", "va", "up"],
                            ["route", "replace", "10.8.0.0/24", "via", "10.9.0.2", "dev", "va"]])
        assert "ip route replace 10.8.0.0/24 via 10.9.0.2 dev va" in caplog.text
        assert "via 10.9.0.2 dev va" in proc.output(["ip", "route", "show", "10.8.0.0/24"], pid)
        assert ns.link("vb")["kind"] == "veth"
        unreachable = [["route", "replace", "10.7.0.0/24", "via", "10.99.0.1", "dev", "va"]]
        with pytest.raises(proc.CommandError, match="Error"):
            ns.batch("ip", unreachable)
        assert ns.batch("ip", unreachable, check=False).startswith("Error")
    finally:
        netlink.close_run(state.prefix)
        state.remove_all()
