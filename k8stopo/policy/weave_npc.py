"""NetworkPolicy as weave-npc enforces it, for the weave-* variants.

weave-npc (weaveworks/weave ``npc/``) keeps no per-policy chains: it analyses every policy
(``npc/analyser.go``) into flat rules over ipsets and appends each distinct rule once
(``npc/rule.go``, keyed by its arguments):

* ``WEAVE-NPC-INGRESS``: ``[-p PROTO] -m set --match-set <src> src -m set --match-set
  <target> dst [--dport P] -j ACCEPT`` per peer and port; ``WEAVE-NPC-EGRESS-CUSTOM``: the
  same with the target as source, jumping to ``WEAVE-NPC-EGRESS-ACCEPT`` (mark 0x40000) and
  returning.
* ipsets named ``weave-`` + shortName (base-85 SHA-1, ``npc/shortname.go``): hash:ip per pod
  selector (key: namespace + ``:`` + the selector's string), list:set of namespaces' all-pods
  sets per namespaceSelector, hash:ip of pods matching podSelector AND namespaceSelector,
  hash:net of an ipBlock's excepts (``-s CIDR -m set ! --match-set <except> src``).
* per namespace, ``ingress-default-allow`` / ``egress-default-allow`` hash:ip sets of the
  pods no policy targets in that direction, accepted first (``WEAVE-NPC-DEFAULT``,
  ``WEAVE-NPC-EGRESS-DEFAULT``, ``npc/namespace.go`` bypassRules).
* ``WEAVE-NPC`` sees traffic bridged *to* a pod (``-o weave``): traffic leaving for another
  node through the router's bridge port is accepted there and judged by the receiving
  node; ``WEAVE-NPC-EGRESS`` sees traffic *from* a pod (``-i weave``) and skips what came
  in from the router's port (the sending node judged it).

What weave-npc does not implement is refused (SpecError) rather than enforced differently:
it rejects a policy with a named port ("named ports in network policies is not supported
yet") and reads only ``port`` of a port entry (``endPort`` would silently allow a single
port).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..cni.weave import Weave, default_allow_sets, short_name
from ..spec import SpecError
from ..templates import render
from .agent import IPSet, PolicyAgent, host, policies_of
from .model import IPBlock, LabelSelector, NetworkPolicy, Peer, Rule
from .semantics import peer_matches

if TYPE_CHECKING:
    from ..cni.base import Variant
    from ..node import Node
    from ..spec import ClusterSpec

EGRESS_MARK = "0x40000"


def set_name(key: str) -> str:
    return "weave-" + short_name(key)


def selector_string(sel: LabelSelector) -> str:
    """labels.Selector.String() of metav1.LabelSelectorAsSelector: sorted requirements,
    ``k=v``, ``k in (a,b)``, ``k notin (a)``, ``k``, ``!k``, joined by commas."""
    out = []
    for r in sel.requirements():
        values = ",".join(r.values)
        out.append({"In": f"{r.key}={values}" if len(r.values) == 1 else f"{r.key} in ({values})",
                    "NotIn": f"{r.key} notin ({values})", "Exists": r.key,
                    "DoesNotExist": f"!{r.key}"}[r.operator])
    return ",".join(out)


class WeaveNPC(PolicyAgent):
    """weave-npc on every node: its chains, its ipsets, its flat rules."""

    name = "weave-npc"

    @classmethod
    def serves(cls, variant: type["Variant"]) -> bool:
        return issubclass(variant, Weave)

    @classmethod
    def validate(cls, spec: "ClusterSpec") -> None:
        for policy in policies_of(spec):
            for rule in policy.ingress + policy.egress:
                for port in rule.ports:
                    if isinstance(port.port, str):
                        raise SpecError(f"NetworkPolicy {policy.key}: weave-npc does not implement "
                                        f"named ports (it rejects the whole policy); use numbers")
                    if port.end_port is not None:
                        raise SpecError(f"NetworkPolicy {policy.key}: weave-npc ignores endPort "
                                        f"(it would allow port {port.port} only); list the ports")

    # -- ipsets ------------------------------------------------------------------------------
    def _pods_set(self, sets: dict[str, IPSet], key: str, peer: Peer, namespace: str) -> str:
        name = set_name(key)
        sets[name] = IPSet("hash:ip", sorted(str(h.ip) for h in map(host, self.pods())
                                             if peer_matches(peer, namespace, h, self.namespaces)))
        return name

    def target(self, policy: NetworkPolicy, sets: dict[str, IPSet]) -> str:
        """The hash:ip set of the pods a policy (or a plain podSelector peer) selects."""
        return self._pods_set(sets, f"{policy.namespace}:{selector_string(policy.pod_selector)}",
                              Peer(pod_selector=policy.pod_selector), policy.namespace)

    def all_pods(self, namespace: str, sets: dict[str, IPSet]) -> str:
        return self._pods_set(sets, f"{namespace}:", Peer(pod_selector=LabelSelector()), namespace)

    def _peer_match(self, peer: Peer, policy: NetworkPolicy, side: str, flag: str,
                    sets: dict[str, IPSet]) -> str:
        if peer.ip_block is not None:
            return self._ip_block(peer.ip_block, policy.namespace, side, flag, sets)
        if peer.namespace_selector is None:
            assert peer.pod_selector is not None
            name = self._pods_set(sets, f"{policy.namespace}:{selector_string(peer.pod_selector)}",
                                  peer, policy.namespace)
        elif peer.pod_selector is None:  # a list:set of the matching namespaces' all-pods sets
            members = [self.all_pods(ns, sets) for ns in self.all_namespaces()
                       if peer.namespace_selector.matches(self.ns_labels(ns))]
            name = set_name(f":{selector_string(peer.namespace_selector)}")
            sets[name] = IPSet("list:set", members)
        else:
            name = self._pods_set(sets, f":{selector_string(peer.pod_selector)}:"
                                        f"{selector_string(peer.namespace_selector)}",
                                  peer, policy.namespace)
        return f"-m set --match-set {name} {side}"

    @staticmethod
    def _ip_block(block: IPBlock, namespace: str, side: str, flag: str,
                  sets: dict[str, IPSet]) -> str:
        if not block.excepts:
            return f"{flag} {block.cidr}"
        excepts = sorted(str(e) for e in block.excepts)
        name = set_name(f"{namespace}:ipblock-except:{' '.join(excepts)}")
        sets[name] = IPSet("hash:net", excepts)
        return f"{flag} {block.cidr} -m set ! --match-set {name} {side}"

    # -- rules ---------------------------------------------------------------------------------
    @staticmethod
    def _ports(rule: Rule) -> list[tuple[str, str]]:
        """withNormalisedProtoAndPort: (``-p PROTO``, ``--dport P``) per port entry (no port:
        0:65535); one empty pair when the rule has no ports."""
        return [(f"-p {p.protocol}", f"--dport {'0:65535' if p.port is None else p.port}")
                for p in rule.ports] or [("", "")]

    def rules(self, sets: dict[str, IPSet]) -> tuple[list[str], list[str]]:
        """(ingress, egress) rule arguments, each distinct rule once, in analysis order."""
        ingress: dict[str, None] = {}
        egress: dict[str, None] = {}
        for policy in self.policies:
            target = f"-m set --match-set {self.target(policy, sets)}"
            for direction, rules, out in (("Ingress", policy.ingress, ingress),
                                          ("Egress", policy.egress, egress)):
                if direction not in policy.policy_types:
                    continue
                for rule in rules:
                    for peer in rule.peers or (None,):
                        if direction == "Ingress":
                            src = "" if peer is None else self._peer_match(peer, policy, "src", "-s", sets)
                            dst = f"{target} dst"
                        else:
                            src = f"{target} src"
                            dst = "" if peer is None else self._peer_match(peer, policy, "dst", "-d", sets)
                        comment = f'-m comment --comment "{policy.key} ({direction.lower()})"'
                        for proto, dport in self._ports(rule):
                            out[" ".join(a for a in (proto, src, dst, dport, comment) if a)] = None
        return list(ingress), list(egress)

    def default_allow(self, sets: dict[str, IPSet]) -> list[tuple[str, str, str]]:
        """Per namespace: the pods no policy targets for ingress / for egress."""
        out = []
        for ns in self.all_namespaces():
            names = default_allow_sets(ns)
            for direction, name in zip(("ingress", "egress"), names):
                targeted = [p for p in self.policies if direction.title() in p.policy_types]
                sets[name] = IPSet("hash:ip", sorted(
                    str(h.ip) for h in map(host, self.pods()) if h.namespace == ns
                    and not any(p.selects(ns, h.labels) for p in targeted)))
            out.append((ns, names[0], names[1]))
        return out

    def node_rules(self, node: "Node") -> tuple[dict[str, IPSet], str]:
        sets: dict[str, IPSet] = {}
        namespaces = self.default_allow(sets)
        ingress, egress = self.rules(sets)
        variant = self.cluster.variant
        assert isinstance(variant, Weave)
        text = render("weave-npc.rules", overlay_port=variant.overlay_port,
                      mark=EGRESS_MARK, namespaces=namespaces, ingress=ingress, egress=egress,
                      egress_drop=any("Egress" in p.policy_types for p in self.policies))
        # list:set members must exist first
        ordered = dict(sorted(sets.items(), key=lambda kv: kv[1].kind == "list:set"))
        return ordered, text

    def sync_node(self, node: "Node") -> None:
        self.load(node, *self.node_rules(node), "weave-npc.rules")
