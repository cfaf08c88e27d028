"""kube-proxy's iptables mode, with its own chain structure and names.

KUBE-SERVICES (nat PREROUTING for pods' traffic, OUTPUT for the node's own)
matches each ClusterIP:port and jumps to KUBE-SVC-<hash>, which picks an
endpoint with ``-m statistic --mode random --probability`` 1/n, 1/(n-1), ... and
jumps to KUBE-SEP-<hash> (DNAT). NodePorts go KUBE-NODEPORTS -> KUBE-EXT-<hash>
(marked for masquerade) -> KUBE-SVC. KUBE-MARK-MASQ sets 0x4000, KUBE-POSTROUTING
masquerades what carries it: traffic to a ClusterIP from outside the cluster CIDR
(kube-proxy's --cluster-cidr local detector), hairpin traffic, NodePort traffic.
ClientIP affinity is ``-m recent`` per endpoint with the Service's timeout. A
Service without endpoints gets a REJECT in filter KUBE-SERVICES (and
KUBE-EXTERNAL-SERVICES for its NodePort). A LoadBalancer's ingress IP (``--lb-pool``)
is matched in KUBE-SERVICES and goes to KUBE-EXT as its NodePort does (kube-proxy's
KUBE-FW firewall chain appears only with loadBalancerSourceRanges, which the
manifests do not carry). externalTrafficPolicy Local: KUBE-EXT sends pods' and the
node's own traffic to KUBE-SVC and the rest, unmasqueraded, to KUBE-SVL (this node's
endpoints only), dropped in filter KUBE-EXTERNAL-SERVICES where the node has none.
Every sync is one iptables-restore
batch per node, checked first with ``--test``; chains of endpoints that are gone
are deleted in the same batch, as kube-proxy does.

A connection whose backend does not answer is not retried: the DNAT decision is
made once, on the first packet, and kept in conntrack.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..templates import render
from .base import KubeProxy
from .model import ServicePortInfo

if TYPE_CHECKING:
    from ..context import ClusterContext
    from ..node import Node

MASQ_MARK = "0x4000"  # kube-proxy's default --iptables-masquerade-bit 14


class IptablesProxy(KubeProxy):
    name = "kube-proxy-iptables"
    mode = "iptables"
    requires = ("iptables-nat", "conntrack")

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.chains: dict[str, set[str]] = {}  # node -> per-service chains it holds

    def render(self, node: "Node", ports: list[ServicePortInfo]) -> tuple[str, set[str]]:
        chains: set[str] = set()
        local = {s.svc_chain: s.local_endpoints(p.name for p in node.pods)
                 for s in ports if s.external_local}
        for s in ports:
            if s.endpoints:
                chains.add(s.svc_chain)
                chains.update(s.sep_chain(ep) for ep in s.endpoints)
                if s.node_port or s.load_balancer_ip:
                    chains.add(s.ext_chain)
                if local.get(s.svc_chain):
                    chains.add(s.svl_chain)
        held = self.chains.get(node.name)
        stale = sorted((held or set()) - chains)
        rules = render("kube-proxy-iptables.rules.j2", node=node.name, ports=ports,
                       chains=sorted(chains | set(stale)), stale=stale, first=held is None,
                       mark=MASQ_MARK, cluster_cidr=self.cluster.pod_cidr, local=local)
        return rules, chains

    def load(self, node: "Node", ports: list[ServicePortInfo]) -> float:
        rules, chains = self.render(node, ports)
        self.cluster.state.path(node.name, "kube-proxy-iptables.rules").write_text(rules)
        node.run(["iptables-restore", "--test", "--noflush"], input=rules, timeout=600)
        took = self.timed_load(node, ["iptables-restore", "--noflush"], rules)
        self.chains[node.name] = chains
        return took
