"""``type: LoadBalancer`` with an external IP, as MetalLB's layer-2 mode gives one on
bare metal (``--lb-pool CIDR``).

Without a pool a LoadBalancer Service is what kube-proxy makes of it with no
load-balancer controller: its ClusterIP and NodePort. With one:

* :func:`assign` is MetalLB's controller: each LoadBalancer Service (in manifest order)
  gets the next free address of the pool as its ingress IP (one it asked for with
  ``spec.loadBalancerIP`` must lie in the pool). kube-proxy then programs that IP on
  every node (:mod:`k8stopo.kubeproxy`).
* :class:`L2Announcer` is MetalLB's speakers: per Service one node is elected as
  MetalLB's layer2_controller elects it (the candidate nodes sorted by
  ``sha256(node + "#" + ip)``, the first wins; with externalTrafficPolicy Local only
  nodes holding a ready endpoint are candidates) and answers ARP for the IP on the
  underlay (:mod:`k8stopo.arpspeaker`) without the IP on any interface.
* An outside client ``ext1``, a host on the underlay switch that is no Kubernetes node,
  reaches the IP as a machine on the same LAN would (:attr:`L2Announcer.client`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import select
import subprocess
import sys
from typing import TYPE_CHECKING, ClassVar

from .agent import Agent
from .errors import DaemonError
from .kubeproxy.model import selects
from .node import Endpoint
from .spec import SpecError
from .topo import SWITCH, UNDERLAY_CIDR, node_ips, subnets
from .workload import ServiceSpec, Workload

if TYPE_CHECKING:
    from .context import ClusterContext
    from .node import Node, Pod
    from .runstate import RunState
    from .spec import ClusterSpec

CLIENT = "ext1"
START_TIMEOUT = 10.0


def client_address(cidr: str = UNDERLAY_CIDR) -> ipaddress.IPv4Interface:
    """The outside client's address: the underlay's third-to-last (the last but one is
    the router's, absent on one segment)."""
    net = subnets(cidr)[0]
    return ipaddress.IPv4Interface(f"{net[-3]}/{net.prefixlen}")


def parse_pool(text: str, nodes: int, cidr: str = UNDERLAY_CIDR) -> ipaddress.IPv4Network:
    """``--lb-pool``: a CIDR on the underlay that holds no node, router or client address."""
    try:
        pool = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise SpecError(f"--lb-pool {text!r} is not an IPv4 CIDR ({exc})") from None
    underlay = ipaddress.IPv4Network(cidr)
    if not pool.subnet_of(underlay):
        raise SpecError(f"--lb-pool {pool} is not on the underlay {underlay}: MetalLB's "
                        "layer-2 mode answers ARP on the nodes' own segment")
    taken = [i.ip for i in node_ips(nodes, cidr)] + [subnets(cidr)[0][-2], client_address(cidr).ip]
    clash = [str(ip) for ip in taken if ip in pool]
    if clash:
        raise SpecError(f"--lb-pool {pool} holds underlay addresses in use ({', '.join(clash)}): "
                        "pick a range outside the nodes' (and the last three addresses)")
    return pool


def assign(workload: Workload, pool: ipaddress.IPv4Network) -> Workload:
    """MetalLB's controller: the pool's addresses to the LoadBalancer Services in order."""
    lbs = [s for s in workload.services if s.type == "LoadBalancer"]
    for s in lbs:
        if s.load_balancer_ip is not None and s.load_balancer_ip not in pool:
            raise SpecError(f"Service {s.namespace}/{s.name}: loadBalancerIP "
                            f"{s.load_balancer_ip} is not in --lb-pool {pool}")
    used = {s.load_balancer_ip for s in lbs}
    free = (ip for ip in (pool.hosts() if pool.prefixlen < 31 else pool) if ip not in used)
    given: dict[tuple[str, str], ipaddress.IPv4Address] = {}
    for s in lbs:
        if s.load_balancer_ip is None:
            ip = next(free, None)
            if ip is None:
                raise SpecError(f"--lb-pool {pool} has too few addresses for the "
                                f"{len(lbs)} LoadBalancer Services")
            given[(s.namespace, s.name)] = ip
    services = tuple(dataclasses.replace(s, load_balancer_ip=given[(s.namespace, s.name)])
                     if (s.namespace, s.name) in given else s for s in workload.services)
    return dataclasses.replace(workload, services=services)


def elect(ip: ipaddress.IPv4Address, candidates: list[str]) -> str | None:
    """MetalLB layer 2's owner of ``ip``: the first of the candidate nodes sorted by
    sha256(node + "#" + ip); None without candidates."""
    ranked = sorted(candidates, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).digest())
    return ranked[0] if ranked else None


class L2Announcer(Agent):
    """MetalLB's speakers in layer-2 mode, and an outside client on the underlay."""

    name = "metallb-l2"
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.client: Endpoint | None = None
        self.speakers: dict[str, subprocess.Popen[str]] = {}  # node -> its speaker
        self.owners: dict[ipaddress.IPv4Address, str] = {}  # ip -> node answering ARP

    @classmethod
    def validate(cls, spec: "ClusterSpec") -> None:
        if spec.underlay != "l2":
            raise SpecError("--lb-pool needs --underlay l2: MetalLB's layer-2 mode answers "
                            "ARP on one segment")

    @property
    def state(self) -> "RunState":
        assert self.cluster.state is not None, "the cluster is being built"
        return self.cluster.state

    def balancers(self) -> list[ServiceSpec]:
        return [s for s in self.cluster.services if s.load_balancer_ip is not None]

    def connect(self) -> None:
        """The outside client: a host with one port on the underlay switch."""
        cluster, underlay = self.cluster, self.cluster.underlay
        host = underlay.add_host(underlay.net.host(CLIENT, ip=None))
        link = underlay.net.addLink(host, underlay.net[SWITCH])
        port = link.intf2.name
        underlay.net[SWITCH].cmd(f"ip link set {port} master br0 up")
        address = client_address(cluster.spec.underlay_cidr)
        host.cmd(f"ip addr add {address} dev {link.intf1.name}")
        host.cmd(f"ip link set {link.intf1.name} up")
        self.client = Endpoint(name=CLIENT, ip=address.ip, pid=host.pid, state=self.state)

    def candidates(self, svc: ServiceSpec) -> list[str]:
        """Every node; with externalTrafficPolicy Local, the nodes with a ready endpoint."""
        if svc.external_traffic_policy != "Local":
            return [n.name for n in self.cluster.nodes]
        return [n.name for n in self.cluster.nodes
                if any(p.ready and selects(svc, p) for p in n.pods)]

    def wait_ready(self, timeout: float) -> None:
        self.announce()

    def pod_changed(self, pod: "Pod") -> None:
        self.announce()

    def announce(self) -> None:
        """Elect each IP's node; (re)start the speakers whose IPs changed."""
        owners = {}
        for svc in self.balancers():
            assert svc.load_balancer_ip is not None
            owner = elect(svc.load_balancer_ip, self.candidates(svc))
            if owner is not None:
                owners[svc.load_balancer_ip] = owner
        for node in self.cluster.nodes:
            mine = sorted(ip for ip, n in owners.items() if n == node.name)
            had = sorted(ip for ip, n in self.owners.items() if n == node.name)
            if mine != had or (mine and node.name not in self.speakers):
                self._stop_speaker(node)
                if mine:
                    self._start_speaker(node, mine)
        self.owners = owners

    def _start_speaker(self, node: "Node", ips: list[ipaddress.IPv4Address]) -> None:
        log = self.state.path(node.name, "arpspeaker.log").open("a")
        p = node.spawn([sys.executable, "-m", "k8stopo.arpspeaker", node.intf,
                        *(str(ip) for ip in ips)], what=f"arpspeaker@{node.name}",
                       stdout=subprocess.PIPE, stderr=log)
        log.close()
        self.speakers[node.name] = p
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], START_TIMEOUT)
        if not ready or p.stdout.readline().strip() != "ready":
            raise DaemonError("arpspeaker", node.name, f"did not start (exit {p.poll()})",
                              self.state.path(node.name, "arpspeaker.log"))

    def _stop_speaker(self, node: "Node") -> None:
        p = self.speakers.pop(node.name, None)
        if p is not None:
            node.stop(p)

    def answered(self, node: "Node") -> str:
        """What ``node``'s speaker logged: one line per ARP request it answered."""
        path = self.state.path(node.name, "arpspeaker.log")
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        for node in self.cluster.nodes:
            self._stop_speaker(node)

