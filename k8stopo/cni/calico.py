"""Calico: routed pods (no bridge), routes exchanged by real BIRD over BGP.

What calico-node does on each node, and how this emulation does it:

* CNI: the real ``ptp`` plugin with ``host-local`` IPAM on the node's /26 block
  (Calico supports host-local IPAM; ptp insists on a gateway inside the block,
  so host-local keeps .1 back); then, as the calico plugin and Felix do, the
  host end is renamed ``cali`` + 11 hex digits of
  sha1("<namespace>.<pod>"), gets MAC ee:ee:ee:ee:ee:ee, no address, proxy-ARP on
  (so it answers for 169.254.1.1), a ``<pod>/32 dev caliX scope link`` route;
  the pod keeps its address as a /32 with ``default via 169.254.1.1 dev eth0``.
* BIRD 2 per node in the node's namespace, its own control socket, config
  rendered from templates/bird.conf (Calico's template): a static blackhole for
  the node's block, exported to every other node over an iBGP full mesh in
  AS 64512, peers' blocks imported into the kernel table.
* On the routed underlay the fabric must know the blocks (Calico's "peer with
  your top-of-rack router" model): every node also peers with its subnet's
  router address (a node-specific BGPPeer), and the router ``r1`` runs BIRD as
  an iBGP route reflector (templates/bird-tor.conf) that installs each block
  via its node. Without it, the router would drop pod traffic between subnets.
* Felix's natOutgoing rule for the pool (templates/calico-iptables.rules):
  pod traffic leaving the pool is masqueraded, pod-to-pod never is.
"""
from __future__ import annotations

import hashlib
import ipaddress
import time
from pathlib import Path
from typing import Any

from ..node import Endpoint, Node, Pod
from .base import Variant, render

CALICO_POOL = "192.168.0.0/16"
GATEWAY = ipaddress.IPv4Address("169.254.1.1")


def cali_name(namespace: str, pod: str) -> str:
    """Calico's host-side veth name for a workload (libcalico-go's VethNameForWorkload)."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


class Calico(Variant):
    """Calico's routed pod plumbing and BIRD mesh; subclasses add encapsulation."""

    pod_cidr = CALICO_POOL
    node_prefixlen = 26
    requires = Variant.requires + ("iptables-nat", "cni:ptp", "cni:host-local", "cni:loopback",
                                   "bird", "birdc")
    ASN = 64512

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster)
        self.birds: dict[str, Any] = {}
        self.tor_bird: Any = None  # the routed underlay's router, when there is one

    def netconf(self, node: Node) -> dict[str, Any]:
        return {
            "cniVersion": "0.3.1",
            "name": "k8s-pod-network",
            "type": "ptp",
            "mtu": self.pod_mtu,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.cluster.state.directory("ipam", node.name)),
                "ranges": [[{"subnet": str(node.pod_cidr)}]],
            },
        }

    def pod_added(self, pod: Pod) -> None:
        """The calico plugin's and Felix's part, after ptp made the veth pair."""
        node = pod.node
        assert node is not None
        host_end = next(i["name"] for i in pod.cni_result["interfaces"] if not i.get("sandbox"))
        cali = cali_name(pod.namespace, pod.name)
        node.run(["ip", "link", "set", host_end, "down"])
        node.run(["ip", "link", "set", host_end, "name", cali, "address", "ee:ee:ee:ee:ee:ee"])
        node.run(["ip", "addr", "flush", "dev", cali])
        node.run(["ip", "link", "set", cali, "up"])
        node.sysctl(f"net.ipv4.conf.{cali}.proxy_arp", 1)
        node.sysctl(f"net.ipv4.neigh.{cali}.proxy_delay", 0)
        node.run(["ip", "route", "replace", f"{pod.ip}/32", "dev", cali, "scope", "link"])
        pod.run(["ip", "addr", "flush", "dev", pod.ifname])  # also drops ptp's routes
        pod.run(["ip", "addr", "add", f"{pod.ip}/32", "dev", pod.ifname])
        pod.run(["ip", "route", "replace", GATEWAY, "dev", pod.ifname, "scope", "link"])
        pod.run(["ip", "route", "replace", "default", "via", GATEWAY, "dev", pod.ifname])

    # -- BIRD -----------------------------------------------------------------------
    def kernel_programming(self) -> str:
        """Extra lines of the calico_kernel_programming filter (tunnels, in subclasses)."""
        return ""

    def bird_config(self, node: Node) -> str:
        peers = [str(p.ip) for p in self.cluster.nodes if p is not node]
        tor = [str(self.cluster.gateway(node))] if self.cluster.router is not None else []
        return render(
            "bird.conf", node=node.name, router_id=node.ip, node_ip=node.ip, block=node.pod_cidr,
            pool=self.cluster.pod_cidr, asn=self.ASN, peers=peers, node_peers=tor,
            kernel_programming=self.kernel_programming())

    def _paths(self, node: Node) -> tuple[Path, Path]:
        base = self.cluster.state.directory(node.name, "bird")
        return base / "bird.conf", base / "bird.ctl"

    def setup_node(self, node: Node) -> None:
        self.install_rules(node, "calico-iptables.rules")

    def connect(self) -> None:
        for node in self.cluster.nodes:
            conf, ctl = self._paths(node)
            conf.write_text(self.bird_config(node))
            node.run(["bird", "-p", "-c", conf])  # BIRD's own config check first
            self.birds[node.name] = node.spawn(["bird", "-f", "-c", conf, "-s", ctl],
                                               what=f"bird@{node.name}")
        if self.cluster.router is not None:
            self._start_tor(self.cluster.router)

    def _start_tor(self, router: Endpoint) -> None:
        """The routed underlay's router peers BGP with every node (templates/bird-tor.conf),
        as a fabric must for unencapsulated pod traffic to cross it."""
        base = self.cluster.state.directory(router.name, "bird")
        conf, ctl = base / "bird.conf", base / "bird.ctl"
        peers = [{"ip": str(n.ip), "via": str(self.cluster.gateway(n))} for n in self.cluster.nodes]
        conf.write_text(render("bird-tor.conf", router=router.name, router_id=router.ip,
                               asn=self.ASN, peers=peers))
        router.run(["bird", "-p", "-c", conf])
        self.tor_bird = router.spawn(["bird", "-f", "-c", conf, "-s", ctl],
                                     what=f"bird@{router.name}")

    def birdc(self, node: Node, *command: str) -> str:
        return node.output(["birdc", "-s", self._paths(node)[1], *command])

    def wait_ready(self, timeout: float) -> None:
        """Poll every node's kernel table (and the routed underlay's router's) until it holds
        every peer's block via BIRD."""
        deadline = time.monotonic() + timeout
        router = self.cluster.router
        speakers: list[Endpoint] = [*self.cluster.nodes, *([router] if router else [])]
        birds = {**self.birds, **({router.name: self.tor_bird} if router else {})}
        while True:
            missing = {n.name: self._missing_blocks(n) for n in speakers}
            missing = {k: v for k, v in missing.items() if v}
            if not missing:
                return
            for name, proc_ in birds.items():
                if proc_.poll() is not None:
                    raise RuntimeError(f"bird on {name} exited: {proc_.stderr.read().strip()}")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        worst = max(missing, key=lambda n: len(missing[n]))
        raise TimeoutError(
            f"BGP did not converge in {timeout:.0f}s: {len(missing)} of {len(speakers)} "
            f"nodes{' and router' if router else ''} still lack peer blocks ({worst} lacks {len(missing[worst])}, e.g. "
            f"{', '.join(missing[worst][:3])}); see `birdc show protocols` on a node")

    def _missing_blocks(self, node: Endpoint) -> list[str]:
        routes = node.output(["ip", "-4", "route", "show", "proto", "bird"])
        have = {line.split()[0] for line in routes.splitlines() if line.strip()}
        return [str(p.pod_cidr) for p in self.cluster.nodes
                if p is not node and str(p.pod_cidr) not in have]

    def stop(self) -> None:
        for name, proc_ in self.birds.items():
            self.cluster.node(name).stop(proc_)
        self.birds.clear()
        if self.tor_bird is not None and self.cluster.router is not None:
            self.cluster.router.stop(self.tor_bird)
            self.tor_bird = None


class CalicoBGP(Calico):
    name = "calico-bgp"
    wire = "plain IP with pod IPs; BGP on TCP 179 between nodes"
