"""NetworkPolicy as Calico's Felix enforces it, for the calico-* variants.

What happens in a real cluster, and here:

* calico-kube-controllers / libcalico-go convert each Kubernetes NetworkPolicy to a Calico
  policy ``knp.default.<name>`` in its namespace, tier ``default``
  (``lib/backend/k8s/conversion``): selector = the podSelector; one Calico rule per peer and
  protocol; a peer's podSelector is scoped to the policy's namespace, a namespaceSelector
  becomes a selector on the namespace profile's labels (``pcns.<key>``); ipBlock becomes
  ``nets`` with ``notNets`` for its excepts; named ports stay names.
* Felix renders only the policies that select a local workload, as chains ``cali-pi-<id>``
  (ingress) and ``cali-po-<id>`` (egress) whose id is ``GetLengthLimitedID`` of
  ``default/<namespace>/knp.default.<name>`` (``felix/rules/policy.go``). Every selector
  becomes a real ipset ``cali40s:<hash>`` of the matching pods' IPs and every named port an
  ipset ``cali40n:<hash>`` of (IP, protocol:port) (``felix/ipsets``, name = ``cali40`` + the
  set's unique id cut to ipset's 31 characters). An allowing rule sets the accept mark and
  returns; an ipBlock with excepts needs Felix's mark-bit "match blocks".
* The workload's ``cali-tw-<iface>`` (to the pod, on the destination node: ingress) and
  ``cali-fw-<iface>`` (from it, on the source node: egress) jump to those chains in order;
  once one applies, the tier's end drops what none accepted (the calico variant's
  :func:`k8stopo.cni.felix.workload_rules` owns that part).

Ipsets are loaded with ``ipset restore`` (create, flush, add) and chains with one
``iptables-restore --noflush`` batch per node after ``--test``, as Felix batches them.
"""
from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

from ..cni import felix as dataplane
from ..cni.calico import Calico, workload_iface
from ..templates import render
from .agent import IPSet, PolicyAgent, host
from .model import LabelSelector, NetworkPolicy, Peer, PolicyPort, Rule
from .semantics import peer_matches

if TYPE_CHECKING:
    from ..cni.base import Variant
    from ..context import ClusterContext
    from ..node import Node

IPSET_MAX = 31  # ipset's IPSET_MAXNAMELEN - 1
DIRECTIONS = {"Ingress": ("cali-pi-", "src", "-s", "ingress"),
              "Egress": ("cali-po-", "dst", "-d", "egress")}


def calico_selector(sel: LabelSelector, prefix: str = "") -> str:
    """A Kubernetes label selector in Calico's selector syntax (conversion.k8sSelectorToCalico);
    ``prefix`` ``pcns.`` addresses namespace labels."""
    terms = []
    for r in sel.requirements():
        key = prefix + r.key
        values = ", ".join(f"'{v}'" for v in r.values)
        terms.append({"In": f"{key} == {values}" if len(r.values) == 1 else f"{key} in {{ {values} }}",
                      "NotIn": f"{key} not in {{ {values} }}",
                      "Exists": f"has({key})", "DoesNotExist": f"! has({key})"}[r.operator])
    return " && ".join(terms) or "all()"


def peer_selector(peer: Peer, namespace: str) -> str:
    """The full selector Felix's calculation graph resolves for a peer of a policy in
    ``namespace`` (the hash input of the peer's ipset)."""
    pods = ("projectcalico.org/orchestrator == 'k8s'" if peer.pod_selector is None
            else f"projectcalico.org/orchestrator == 'k8s' && {calico_selector(peer.pod_selector)}")
    if peer.namespace_selector is None:
        return f"(projectcalico.org/namespace == '{namespace}') && ({pods})"
    return f"({calico_selector(peer.namespace_selector, 'pcns.')}) && ({pods})"


def ipset_name(kind: str, content: str) -> str:
    """``cali40`` + the set id ``<kind>:<base64url(sha224(content))>``, cut to 31 chars."""
    digest = base64.urlsafe_b64encode(hashlib.sha224(content.encode()).digest()).decode()
    return f"cali40{kind}:{digest.rstrip('=')}"[:IPSET_MAX]


def policy_id(policy: NetworkPolicy) -> str:
    return f"default/{policy.namespace}/knp.default.{policy.name}"


def chain_name(policy: NetworkPolicy, direction: str) -> str:
    return dataplane.limited_name(DIRECTIONS[direction][0], policy_id(policy))


class FelixPolicy(PolicyAgent):
    """Felix's policy half: policy chains, selector ipsets, and the workloads' jumps."""

    name = "felix-policy"

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.chains: dict[str, set[str]] = {}  # node -> policy chains loaded there

    @classmethod
    def serves(cls, variant: type["Variant"]) -> bool:
        return issubclass(variant, Calico)

    # -- rendering -----------------------------------------------------------------------
    def _selector_set(self, peer: Peer, policy: NetworkPolicy, sets: dict[str, IPSet]) -> str:
        name = ipset_name("s", peer_selector(peer, policy.namespace))
        members = sorted(f"{h.ip}/32" for h in map(host, self.pods())
                         if peer_matches(peer, policy.namespace, h, self.namespaces))
        sets[name] = IPSet("hash:net", members)
        return name

    def _named_port_set(self, port: PolicyPort, selector: str, targets: Peer,
                        policy: NetworkPolicy, sets: dict[str, IPSet]) -> str:
        """(IP, port) of every pod matching ``targets`` that has the named port."""
        name = ipset_name("n", f"{selector},{port.protocol.lower()}:{port.port}")
        members = sorted(f"{h.ip},{port.protocol.lower()}:{cp.container_port}"
                         for h in map(host, self.pods())
                         if peer_matches(targets, policy.namespace, h, self.namespaces)
                         for cp in h.ports if cp.name == port.port and cp.protocol == port.protocol)
        sets[name] = IPSet("hash:ip,port", members)
        return name

    def _port_matches(self, rule: Rule, policy: NetworkPolicy, direction: str,
                      peer: Peer | None, sets: dict[str, IPSet]) -> list[str]:
        """One match per Calico rule the ports make: numeric ports of a protocol in one
        multiport match; each named port its own (IP, port) ipset; none: any protocol."""
        if not rule.ports:
            return [""]
        matches = []
        for proto in dict.fromkeys(p.protocol for p in rule.ports):
            of_proto = [p for p in rule.ports if p.protocol == proto]
            p = f"-p {proto.lower()}"
            if any(x.port is None for x in of_proto):
                matches.append(p)
                continue
            numeric = [f"{x.port}:{x.end_port}" if x.end_port else str(x.port)
                       for x in of_proto if isinstance(x.port, int)]
            for i in range(0, len(numeric), 15):  # multiport's 15-port limit (SplitPortList)
                matches.append(f"{p} -m multiport --destination-ports {','.join(numeric[i:i + 15])}")
            for x in of_proto:
                if isinstance(x.port, str):
                    # The named port lives on the destination: the policy's own pods for
                    # ingress, the rule's peer (or any pod) for egress.
                    targets = (Peer(pod_selector=policy.pod_selector) if direction == "Ingress"
                               else peer or Peer(namespace_selector=LabelSelector(),
                                                 pod_selector=LabelSelector()))
                    sel = peer_selector(targets, policy.namespace)
                    ipset = self._named_port_set(x, sel, targets, policy, sets)
                    matches.append(f"{p} -m set --match-set {ipset} dst,dst")
        return matches

    def _rules(self, policy: NetworkPolicy, direction: str,
               sets: dict[str, IPSet]) -> list[dict[str, object]]:
        _, side, flag, _ = DIRECTIONS[direction]
        scratch = f"{dataplane.MARK_SCRATCH0:#x}"
        out: list[dict[str, object]] = []
        for rule in policy.ingress if direction == "Ingress" else policy.egress:
            for peer in rule.peers or (None,):
                pre: list[tuple[str, str]] = []
                if peer is None:
                    where = ""
                elif peer.ip_block is not None:
                    where = f"{flag} {peer.ip_block.cidr}"
                    if peer.ip_block.excepts:  # a negated match block (matchBlockBuilder)
                        pre = [("", f"{scratch}/{scratch}")]
                        pre += [(f"{flag} {e}", f"0x0/{scratch}") for e in peer.ip_block.excepts]
                        where += f" -m mark --mark {scratch}/{scratch}"
                else:
                    where = f"-m set --match-set {self._selector_set(peer, policy, sets)} {side}"
                for ports in self._port_matches(rule, policy, direction, peer, sets):
                    match = " ".join(m for m in (ports, where) if m)
                    out.append({"pre": pre, "match": match})
        return out

    def policy_chain(self, policy: NetworkPolicy, direction: str, sets: dict[str, IPSet]) -> str:
        return render("felix-policy.rules", chain=chain_name(policy, direction),
                      rules=self._rules(policy, direction, sets),
                      comment=f"Policy {policy.namespace}/knp.default.{policy.name} "
                              f"{DIRECTIONS[direction][3]}",
                      accept=dataplane.MARK_ACCEPT)

    def applying(self, namespace: str, labels: dict[str, str], direction: str) -> list[NetworkPolicy]:
        """The policies that apply to a workload in one direction, in Felix's order
        (all Kubernetes policies have order 1000; then by name)."""
        return sorted((p for p in self.policies
                       if direction in p.policy_types and p.selects(namespace, labels)),
                      key=policy_id)

    def node_rules(self, node: "Node") -> tuple[dict[str, IPSet], list[str]]:
        """One node's ipsets and filter-table lines: active policies' chains, then every local
        workload's chains with its policy jumps."""
        sets: dict[str, IPSet] = {}
        chains: dict[str, str] = {}
        workloads: list[str] = []
        for pod in node.pods:
            if pod.host_network:
                continue
            jumps: dict[str, list[str]] = {}
            for direction in DIRECTIONS:
                active = self.applying(pod.namespace, pod.labels, direction)
                for policy in active:
                    name = chain_name(policy, direction)
                    if name not in chains:
                        chains[name] = self.policy_chain(policy, direction, sets)
                jumps[direction] = [chain_name(p, direction) for p in active]
            workloads += dataplane.workload_rules(workload_iface(pod), pod,
                                                  jumps["Ingress"], jumps["Egress"])
        lines = [line for text in chains.values() for line in text.splitlines()]
        return sets, lines + workloads

    # -- loading -------------------------------------------------------------------------
    def sync_node(self, node: "Node") -> None:
        sets, lines = self.node_rules(node)
        chains = {l.split()[0][1:] for l in lines if l.startswith((":cali-pi-", ":cali-po-"))}
        stale = self.chains.get(node.name, set()) - chains
        # Felix empties a policy chain no workload jumps to any more, then deletes it.
        lines = [f":{c} - [0:0]" for c in sorted(stale)] + lines
        # kube-proxy's first sync (its wait_ready, before ours) prepended KUBE-FORWARD
        lines += dataplane.jumps_on_top()
        self.load(node, sets, dataplane.table("filter", lines), "felix-policy.rules")
        for chain in sorted(stale):
            node.run(["iptables", "-X", chain])
        self.chains[node.name] = chains

