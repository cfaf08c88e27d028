"""A real application's paths on a running cluster (calico-bgp, 3 nodes, Felix enforcing
its policies): the parallel probe against the serial one, cluster DNS by Service, headless
and StatefulSet names, readiness probes feeding the endpoints, HTTP answers, and a
LoadBalancer IP answered on the underlay as MetalLB's layer-2 mode answers it."""
from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest
from apps import NS, shop

from k8stopo import loadbalancer, policy, probe
from k8stopo.cluster import Cluster
from k8stopo.cni import variant
from k8stopo.dns import ClusterDNS
from k8stopo.hostport import HostPorts
from k8stopo.kubeproxy import MODES, IptablesProxy, proxy_class
from k8stopo.kubeproxy.model import service_ports
from k8stopo.loadbalancer import L2Announcer
from k8stopo.readiness import Readiness
from k8stopo.servers import PodServers
from k8stopo.spec import ClusterSpec, SpecError
from k8stopo.workload import ContainerPort, PodSpec, ServicePort, ServiceSpec, Workload, pod_handle

from conftest import k8stopo

POOL = ipaddress.IPv4Network("172.20.200.0/29")
CNI = "calico-bgp"


def pod(cluster: Cluster, name: str):
    return cluster.pod(pod_handle(name, NS))


@pytest.fixture(scope="module")
def cluster():
    workload = loadbalancer.assign(shop(), POOL)
    spec = ClusterSpec(cni=CNI, nodes=3, pods_per_node=0, workload=workload)
    agents = [PodServers, IptablesProxy, ClusterDNS, Readiness, L2Announcer,
              *policy.agents_for(variant(CNI))]
    with Cluster(spec, agents=agents) as c:
        yield c


def agent(cluster: Cluster, cls):
    return next(a for a in cluster.agents if isinstance(a, cls))


# -- pure: the pool, MetalLB's election ---------------------------------------------------
def test_the_pool_is_checked_and_given_in_order() -> None:
    assert loadbalancer.parse_pool("172.20.200.0/29", 3) == POOL
    for bad in ("10.0.0.0/24", "172.20.0.0/29", "172.20.255.252/30", "nonsense", "172.20.200.1/29"):
        with pytest.raises(SpecError):
            loadbalancer.parse_pool(bad, 3)
    got = loadbalancer.assign(shop(), POOL)
    lbs = [s for s in got.services if s.type == "LoadBalancer"]
    assert [s.load_balancer_ip for s in lbs] == [POOL[1]]  # the first host address
    assert all(s.load_balancer_ip is None for s in got.services if s.type != "LoadBalancer")
    one = ipaddress.IPv4Network("172.20.200.9/32")
    assert [s.load_balancer_ip for s in loadbalancer.assign(shop(), one).services
            if s.type == "LoadBalancer"] == [one[0]]
    two = dataclasses.replace(shop(), services=(*shop().services, dataclasses.replace(
        shop().services[0], name="second")))
    with pytest.raises(SpecError, match="too few"):
        loadbalancer.assign(two, one)


def test_election_is_metallbs_hash_order() -> None:
    import hashlib
    ip = POOL[1]
    nodes = ["n1", "n2", "n3"]
    want = min(nodes, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).digest())
    assert loadbalancer.elect(ip, nodes) == want
    assert loadbalancer.elect(ip, list(reversed(nodes))) == want  # order-independent
    assert loadbalancer.elect(ip, []) is None


@pytest.mark.requires_root
def test_bad_lb_pool_exits_2_before_building() -> None:
    res = k8stopo("up", "--cni", "flannel-vxlan", "--manifests", "tests/data/services.yaml",
                  "--lb-pool", "10.1.0.0/24")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--lb-pool" in res.stderr


# -- on a cluster ---------------------------------------------------------------------------


@pytest.mark.requires_root
def test_parallel_probe_gives_the_serial_table(cluster: Cluster) -> None:
    clients = [pod(cluster, n) for n in ("loadgen", "frontend-0", "cart-0")]
    wanted = probe.targets(cluster, [7070, 6379], ["tcp"])
    parallel = probe.probe(cluster, wanted, clients=clients)
    serial = probe.probe(cluster, wanted, clients=clients, parallel=False)
    assert probe.truth_tables(parallel) == probe.truth_tables(serial)
    seen = {(r.source, r.column, r.port): r.connected for r in parallel}
    assert seen[("shop/frontend-0", "shop/cart-0", 7070)]  # allowed by allow-cart
    assert not seen[("shop/frontend-0", "shop/cart-0", 6379)]  # not a port it allows
    assert not seen[("shop/loadgen", "shop/cart-0", 7070)]  # deny-all
    assert seen[("shop/cart-0", "shop/store-0", 6379)]  # allowed by allow-store
    assert not seen[("shop/frontend-0", "shop/store-0", 6379)]
    assert seen[("shop/frontend-0", "svc:shop/cart", 7070)]  # the Service: cart-0 only


@pytest.mark.requires_root
def test_readiness_keeps_a_pod_with_an_unserved_probe_port_out(cluster: Cluster) -> None:
    ports = {s.service: s for s in service_ports(cluster.spec.workload, cluster.pods)}
    assert [e.pod for e in ports["cart"].endpoints] == [pod_handle("cart-0", NS)]
    assert not pod(cluster, "broken-0").ready
    assert {e.pod for e in ports["frontend"].endpoints} == {
        pod_handle("frontend-0", NS), pod_handle("frontend-1", NS)}
    states = agent(cluster, Readiness).states
    web = states[pod_handle("frontend-0", NS)]
    assert web.checked_at[0] - web.started >= 2.0  # initialDelaySeconds
    assert states[pod_handle("broken-0", NS)].failures >= 1


@pytest.mark.requires_root
def test_service_and_statefulset_names_resolve_in_a_pod(cluster: Cluster) -> None:
    loadgen = pod(cluster, "loadgen")
    assert f"search {NS}.svc.cluster.local" in loadgen.output(["cat", "/etc/resolv.conf"])

    def hosts(name: str) -> set[str]:
        out = loadgen.output(["getent", "ahostsv4", name])
        return {line.split()[0] for line in out.splitlines()}

    assert hosts("cart") == {"10.96.10.2"}
    stores = {str(pod(cluster, n).ip) for n in ("store-0", "store-1")}
    assert hosts(f"store.{NS}.svc.cluster.local") == stores
    assert hosts(f"store-0.store.{NS}.svc.cluster.local") == {str(pod(cluster, "store-0").ip)}


@pytest.mark.requires_root
def test_a_service_by_name_answers_http(cluster: Cluster) -> None:
    out = pod(cluster, "loadgen").output(["curl", "-s", "-i", "-m", "5",
                                          f"http://frontend.{NS}.svc.cluster.local/"])
    assert out.startswith("HTTP/1.1 200 OK"), out
    assert out.rstrip().splitlines()[-1] in {f"{NS}/frontend-0", f"{NS}/frontend-1"}


@pytest.mark.requires_root
def test_probe_by_name_puts_dns_in_the_path(cluster: Cluster) -> None:
    wanted = [t for t in probe.targets(cluster, [80], ["tcp"], by_name=True)
              if t.to == f"svc:{NS}/frontend" and not t.column]
    assert [t.via for t in wanted] == [f"frontend.{NS}.svc.cluster.local"]
    results = probe.probe(cluster, wanted, 3, clients=[pod(cluster, "loadgen")])
    assert all(r.connected for r in results), results


@pytest.mark.requires_root
def test_load_balancer_ip_from_outside_the_cluster(cluster: Cluster) -> None:
    lb = agent(cluster, L2Announcer)
    ip = POOL[1]
    owner = cluster.node(lb.owners[ip])
    assert lb.client is not None
    results = probe.probe_from(cluster, lb.client, [probe.Target("lb", str(ip), 80, "tcp")], 6)
    assert all(r.connected for r in results), results
    assert {r.answered_by for r in results} <= {f"{NS}/frontend-0", f"{NS}/frontend-1"}
    neigh = json.loads(lb.client.output(["ip", "-j", "neigh", "show", str(ip)]))
    assert neigh and neigh[0]["lladdr"] == owner.link(owner.intf)["address"], neigh
    assert f"answered {ip}" in lb.answered(owner)
    for other in cluster.nodes:
        if other is not owner:
            assert f"answered {ip}" not in lb.answered(other)
        addrs = other.output(["ip", "-4", "addr", "show"])
        assert str(ip) not in addrs  # answered by ARP, never on an interface
    saved = owner.output(["iptables-save", "-t", "nat"])
    assert f"-d {ip}/32" in saved and "loadbalancer IP" in saved


# -- hostNetwork and hostPort -------------------------------------------------------------
@pytest.fixture(scope="module")
def hosts():
    pods = (PodSpec("hp", "default", {"app": "hp"}, "n2", (ContainerPort(8080, host_port=30888),)),
            PodSpec("hn", "default", {"app": "hn"}, "n1", (ContainerPort(9090),),
                    host_network=True),
            PodSpec("hnd", "default", {"app": "hnd"}, "n2", (ContainerPort(9191),),
                    host_network=True, dns_policy="ClusterFirstWithHostNet"),
            PodSpec("c", "default", {}, "n1"))
    svc = ServiceSpec("hp", "default", "ClusterIP", ipaddress.IPv4Address("10.96.20.1"),
                      {"app": "hp"}, (ServicePort(80, 8080),))
    spec = ClusterSpec(cni="flannel-vxlan", nodes=2, pods_per_node=0,
                       workload=Workload(pods=pods, services=(svc,)))
    with Cluster(spec, agents=[PodServers, IptablesProxy, ClusterDNS, HostPorts]) as c:
        yield c


@pytest.mark.requires_root
def test_a_host_port_answers_on_its_nodes_ip(hosts: Cluster) -> None:
    n1, n2 = hosts.node("n1"), hosts.node("n2")
    target = [probe.Target("hp", str(n2.ip), 30888, "tcp")]
    for client in (n1, hosts.pod("c.default")):
        results = probe.probe_from(hosts, client, target, 2)
        assert {r.answered_by for r in results} == {"default/hp"}, results
    assert "CNI-HOSTPORT-DNAT" in n2.output(["iptables-save", "-t", "nat"])  # portmap's chain


@pytest.mark.requires_root
def test_host_network_pods_share_their_nodes_stack_and_keep_its_dns(hosts: Cluster) -> None:
    hn, hnd = hosts.pod("hn.default"), hosts.pod("hnd.default")
    assert hn.host_network and hn.ip == hosts.node("n1").ip
    results = probe.probe_from(hosts, hosts.pod("c.default"),
                               [probe.Target("hn", str(hn.ip), 9090, "tcp")], 2)
    assert {r.answered_by for r in results} == {"default/hn"}, results
    cluster_dns = "nameserver 10.96.0.10"
    assert cluster_dns not in hn.output(["cat", "/etc/resolv.conf"])  # ClusterFirst -> Default
    assert cluster_dns in hnd.output(["cat", "/etc/resolv.conf"])  # ClusterFirstWithHostNet
    assert cluster_dns in hosts.pod("c.default").output(["cat", "/etc/resolv.conf"])


# -- the load-balancer IP in every proxy mode -----------------------------------------------


@pytest.mark.requires_root
@pytest.mark.parametrize("mode", list(MODES))
def test_every_proxy_mode_serves_the_load_balancer_ip(mode: str) -> None:
    workload = loadbalancer.assign(shop(policies=False), POOL)
    spec = ClusterSpec(cni="flannel-vxlan", nodes=3, pods_per_node=0, workload=workload)
    with Cluster(spec, agents=[PodServers, proxy_class(mode), Readiness, L2Announcer]) as c:
        lb = agent(c, L2Announcer)
        assert lb.client is not None
        wanted = [probe.Target("lb", str(POOL[1]), 80, "tcp"),
                  *(probe.Target("np", str(n.ip), 30080, "tcp") for n in c.nodes)]
        results = probe.probe_from(c, lb.client, wanted, 3)
    assert all(r.connected for r in results), [r for r in results if not r.connected]
    assert {r.answered_by for r in results} <= {f"{NS}/frontend-0", f"{NS}/frontend-1"}


@pytest.mark.requires_root
def test_external_traffic_policy_local_keeps_the_clients_address() -> None:
    """iptables mode: KUBE-EXT sends outside traffic to KUBE-SVL (this node's endpoints),
    unmasqueraded; MetalLB elects only a node that holds one."""
    workload = loadbalancer.assign(shop(policies=False, lb_policy="Local"), POOL)
    spec = ClusterSpec(cni="flannel-vxlan", nodes=3, pods_per_node=0, workload=workload)
    with Cluster(spec, agents=[PodServers, IptablesProxy, Readiness, L2Announcer]) as c:
        lb = agent(c, L2Announcer)
        assert lb.client is not None
        owner = lb.owners[POOL[1]]
        assert owner in {"n1", "n2"}  # the frontends' nodes
        local = {"n1": f"{NS}/frontend-0", "n2": f"{NS}/frontend-1"}[owner]
        results = probe.probe_from(c, lb.client, [probe.Target("lb", str(POOL[1]), 80, "tcp")], 6)
        n3 = probe.probe_from(c, lb.client, [probe.Target("np", str(c.node("n3").ip), 30080,
                                                          "tcp")], 1)
        saved = c.node(owner).output(["iptables-save", "-t", "nat"])
    assert {r.answered_by for r in results} == {local}, results
    assert {r.peer for r in results} == {str(lb.client.ip)}  # not masqueraded
    assert not n3[0].connected  # no local endpoint on n3: dropped
    assert "KUBE-SVL-" in saved


@pytest.mark.parametrize("mode", ["nftables", "userspace"])
def test_external_traffic_policy_local_is_refused_where_not_emulated(mode: str) -> None:
    spec = ClusterSpec(cni="flannel-vxlan", nodes=3, pods_per_node=0,
                       workload=shop(policies=False, lb_policy="Local"))
    with pytest.raises(SpecError, match="externalTrafficPolicy Local"):
        Cluster(spec, agents=[PodServers, proxy_class(mode)])


# -- the prober's schedule and thresholds (no cluster: a stand-in pod and check) -------------
def test_readiness_thresholds_and_period() -> None:
    from types import SimpleNamespace

    from k8stopo.workload import Probe
    changes: list[bool] = []

    def set_ready(pod: SimpleNamespace, ready: bool) -> None:
        changes.append(ready)
        pod.ready = ready

    stub = SimpleNamespace(
        spec=SimpleNamespace(workload=Workload(pods=(PodSpec("p", readiness=Probe(
            "tcpSocket", 80, initial_delay_s=0, period_s=5, success_threshold=2,
            failure_threshold=3)),))),
        set_ready=set_ready)
    prober = Readiness(stub)
    pod = SimpleNamespace(name=pod_handle("p", "default"), ready=True)
    prober.pod_added(pod)  # type: ignore[arg-type]
    assert pod.ready is False  # not ready until the probe passes
    verdicts = iter([True, True, False, False, True, False, False, False])
    prober.check = lambda pod, probe: next(verdicts)  # type: ignore[method-assign]
    seen = []
    for _ in range(8):
        prober.due[0].at = 0.0  # due now: the schedule itself is checked below
        prober.step()
        seen.append(pod.ready)
    assert seen == [False, True, True, True, True, True, True, False]
    assert changes == [True, False]
    state = prober.states[pod.name]
    assert prober.due[0].at == 5.0  # the next check: one period after the last one was due
    assert state.checks == 8


# -- the application experiment's file ------------------------------------------------------
def test_app_experiment_file_is_checked(tmp_path) -> None:
    from pathlib import Path

    from k8stopo import apppaths
    exp = apppaths.load(Path("experiments/apps/app.yaml"))
    assert exp.manifests.is_dir() and exp.proxy_modes == tuple(MODES)
    good = f"manifests: {exp.manifests}\nclient: shop/frontend-0\n"
    for bad, why in ((good + "colour: red\n", "unknown key"), ("client: a/b\n", "manifests"),
                     (good + "proxy_modes: [ipvs]\n", "proxy-mode"),
                     (good + "count: 0\n", "count"), (good + "policies: [maybe]\n", "policies"),
                     (good.replace(str(exp.manifests), "nowhere.yaml"), "do not exist")):
        path = tmp_path / "e.yaml"
        path.write_text(bad)
        with pytest.raises(SpecError, match=why):
            apppaths.load(path)
    res = k8stopo("app", "--experiment", str(path))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
