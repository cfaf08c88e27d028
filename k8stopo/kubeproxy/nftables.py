"""kube-proxy's nftables mode: the ``kube-proxy`` table, dispatch by verdict maps.

Where iptables mode walks KUBE-SERVICES rule by rule, nftables mode looks the
packet's ``daddr . l4proto . dport`` up in the ``service-ips`` verdict map (a
hash: the cost does not grow with the number of Services) and ``goto``s the
``service-<hash>-ns/svc/proto/port`` chain, which picks an endpoint with
``numgen random mod n vmap``; NodePorts go through ``service-nodeports`` and
``external-…`` (masquerade), and so does a LoadBalancer's ingress IP, an element of
``service-ips`` as in kube-proxy (externalTrafficPolicy Local is refused in this
mode). No-endpoint Services are rejected from
``endpoints-check`` through ``no-endpoint-services``. ClientIP affinity is a
dynamic ``affinity-…`` set with the Service's timeout. Chain names are hashed as
kube-proxy's servicePortChainNameBase does. One ``nft -f`` transaction per node,
checked with ``nft -c -f`` first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..templates import render
from .base import KubeProxy
from .iptables import MASQ_MARK
from .model import ServicePortInfo, refuse_local

if TYPE_CHECKING:
    from ..context import ClusterContext
    from ..node import Node
    from ..spec import ClusterSpec


class NftablesProxy(KubeProxy):
    name = "kube-proxy-nftables"
    mode = "nftables"
    requires = ("nft", "conntrack")

    @classmethod
    def validate(cls, spec: "ClusterSpec") -> None:
        refuse_local(spec, cls.mode)

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.held: dict[str, tuple[set[str], set[str]]] = {}  # node -> (chains, sets)

    def render(self, node: "Node", ports: list[ServicePortInfo]) -> tuple[str, set[str], set[str]]:
        live = [s for s in ports if s.endpoints]
        dead = [s for s in ports if not s.endpoints]
        chains, sets = set(), set()
        for s in live:
            chains.add(f"service-{s.nft_base}")
            if s.node_port or s.load_balancer_ip:
                chains.add(f"external-{s.nft_base}")
            for ep in s.endpoints:
                chains.add(f"endpoint-{s.nft_endpoint_base(ep)}")
                if s.affinity_timeout:
                    sets.add(f"affinity-{s.nft_endpoint_base(ep)}")
        old_chains, old_sets = self.held.get(node.name, (set(), set()))
        rules = render(
            "kube-proxy-nftables.nft.j2", node=node.name, ports=ports, mark=MASQ_MARK,
            cluster_cidr=self.cluster.pod_cidr, stale_chains=sorted(old_chains - chains),
            stale_sets=sorted(old_sets - sets),
            service_ips=[f"{s.cluster_ip} . {s.protocol} . {s.port} : goto service-{s.nft_base}"
                         for s in live]
            + [f"{s.load_balancer_ip} . {s.protocol} . {s.port} : goto external-{s.nft_base}"
               for s in live if s.load_balancer_ip],
            service_nodeports=[f"{s.protocol} . {s.node_port} : goto external-{s.nft_base}"
                               for s in live if s.node_port],
            no_endpoint_services=[f"{ip} . {s.protocol} . {s.port} : goto reject-chain"
                                  for s in dead for ip in (s.cluster_ip, s.load_balancer_ip) if ip],
            no_endpoint_nodeports=[f"{s.protocol} . {s.node_port} : goto reject-chain"
                                   for s in dead if s.node_port])
        return rules, chains, sets

    def load(self, node: "Node", ports: list[ServicePortInfo]) -> float:
        rules, chains, sets = self.render(node, ports)
        self.cluster.state.path(node.name, "kube-proxy.nft").write_text(rules)
        node.run(["nft", "-c", "-f", "-"], input=rules, timeout=600)
        took = self.timed_load(node, ["nft", "-f", "-"], rules)
        self.held[node.name] = (chains, sets)
        return took

    def stop(self) -> None:
        """Delete the table, as ``kube-proxy --cleanup`` does (the namespace goes anyway)."""
        for node in self.cluster.nodes:
            if self.synced:
                node.run(["nft", "delete", "table", "ip", "kube-proxy"], check=False)
