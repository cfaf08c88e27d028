"""Felix's iptables dataplane, as Felix renders it when no NetworkPolicy exists.

Felix installs its chains whatever the policy: every pod packet walks them, so
a Calico node without them is not Calico. The shapes (chain names, marks, rule
order) follow projectcalico/calico ``felix/rules/static.go`` (raw, mangle,
filter, nat static chains), ``felix/rules/endpoints.go`` (per-workload
``cali-tw-``/``cali-fw-`` chains, ``appendConntrackRules``), ``dispatch.go``
(``cali-from-wl-dispatch``/``cali-to-wl-dispatch``) and ``policy.go`` (profile
and policy chain names), checked against the real dump
``felix/fv/cali-iptables-dump.txt``. Differences, none on a packet's path: no
``cali:<hash>`` rule-ID comments; the dispatch chains are flat (Felix splits
them into a prefix tree only when interface names share prefixes).

Mark bits (Felix's defaults for ``IptablesMarkMask`` 0xffff0000): accept
0x10000, pass 0x20000, scratch0 0x80000 (raw: "from a workload"), scratch1
0x100000.
"""
from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Iterable, Sequence

from ..templates import render

if TYPE_CHECKING:
    from ..node import Node, Pod

MARK_ACCEPT = 0x10000
MARK_PASS = 0x20000
MARK_SCRATCH0 = 0x80000
MARK_SCRATCH1 = 0x100000
ALL_MARKS = MARK_ACCEPT | MARK_PASS | MARK_SCRATCH0 | MARK_SCRATCH1  # 0x1b0000
MAX_CHAIN_NAME = 28  # felix/iptables/table.go MaxChainNameLength
VXLAN_PORT = 4789
IPIP_DEVICE = "tunl0"  # dataplanedefs.IPIPIfaceName
VXLAN_DEVICE = "vxlan.calico"  # dataplanedefs.VXLANIfaceNameV4
#: ipset names Felix gives its host sets ("cali" + "4" + "0" + set ID, ipsets/ipset_defs.go)
IPSET_ALL_HOSTS = "cali40all-hosts-net"
IPSET_ALL_VXLAN = "cali40all-vxlan-net"


def limited_name(prefix: str, suffix: str, max_length: int = MAX_CHAIN_NAME) -> str:
    """libcalico-go's ``hash.GetLengthLimitedID``: prefix + suffix, or, when too long,
    prefix + ``_`` + the URL-safe base64 SHA-256 of the suffix cut to fit."""
    if not suffix:
        suffix = "_"
    total = len(prefix) + len(suffix)
    if total > max_length or (total == max_length and suffix[0] == "_"):
        digest = base64.urlsafe_b64encode(hashlib.sha256(suffix.encode()).digest()).decode()
        return prefix + "_" + digest.rstrip("=")[:max_length - 1 - len(prefix)]
    return prefix + suffix


def profile_ids(pod: "Pod", service_account: str = "default") -> list[str]:
    """The profiles the Kubernetes datastore gives a pod: its namespace's (allow-all
    both ways) and its service account's (labels only, no rules)."""
    return [f"kns.{pod.namespace}", f"ksa.{pod.namespace}.{service_account}"]


def profile_rules(profile: str) -> list[str]:
    """Both chains of one profile; ``kns.*`` allow everything (libcalico-go
    NamespaceToProfile: Ingress/Egress ``[{Action: Allow}]``), ``ksa.*`` have no rules."""
    return render("felix-profile.rules", inbound=limited_name("cali-pri-", profile),
                  outbound=limited_name("cali-pro-", profile),
                  allow=profile.startswith("kns."), accept=MARK_ACCEPT).splitlines()


def workload_rules(iface: str, pod: "Pod", ingress_policies: Sequence[str] = (),
                   egress_policies: Sequence[str] = ()) -> list[str]:
    """The filter-table lines (chain declarations and rules, no ``*filter``/``COMMIT``) of
    one workload: ``cali-tw-<iface>`` (traffic to the pod) and ``cali-fw-<iface>`` (from it),
    plus the chains of its profiles. Feed them to :func:`restore` (with the dispatch lines
    when the node's set of workloads changed, see :func:`dispatch_rules`).

    ``ingress_policies`` / ``egress_policies`` name policy chains (Felix calls them
    ``cali-pi-<policy>`` / ``cali-po-<policy>``; build names with :func:`limited_name`)
    that apply to this pod, in order, in one tier ``default``. Felix's contract with them,
    which the NetworkPolicy agent must keep: a policy chain that allows a packet sets the
    accept mark (``-j MARK --set-xmark 0x10000/0x10000``) and returns; one that passes it
    to the profiles sets the pass mark 0x20000 and returns; one with no matching rule
    returns with no mark. After each policy the workload chain returns (accepts) if the
    accept mark is set; once any policy applies, a packet no policy accepted or passed is
    dropped at the end of the tier. Without policies the profiles decide (allow-all).
    Policy chains must exist when these lines load (declare them in the same batch, first).
    """
    return render("felix-workload.rules", iface=iface, tw=limited_name("cali-tw-", iface),
                  fw=limited_name("cali-fw-", iface),
                  ingress=list(ingress_policies), egress=list(egress_policies),
                  profiles_in=[limited_name("cali-pri-", p) for p in profile_ids(pod)],
                  profiles_out=[limited_name("cali-pro-", p) for p in profile_ids(pod)],
                  accept=MARK_ACCEPT, pass_=MARK_PASS, vxlan_port=VXLAN_PORT).splitlines() + \
        [line for p in profile_ids(pod) for line in profile_rules(p)]


def dispatch_rules(ifaces: Iterable[str]) -> list[str]:
    """``cali-from-wl-dispatch`` / ``cali-to-wl-dispatch`` for every workload interface
    of a node (re-rendered whole whenever a workload comes or goes, as Felix does)."""
    return render("felix-dispatch.rules",
                  workloads=[(i, limited_name("cali-fw-", i), limited_name("cali-tw-", i))
                             for i in sorted(ifaces)]).splitlines()


def host_ipset(tunnel_device: str | None) -> str | None:
    """The ipset of Calico hosts that Felix's rules for this tunnel match (None: no tunnel)."""
    return {IPIP_DEVICE: IPSET_ALL_HOSTS, VXLAN_DEVICE: IPSET_ALL_VXLAN}.get(tunnel_device or "")


#: the jumps from the filter table's kernel chains into Felix's (ChainInsertMode "insert")
FILTER_JUMPS = (
    'INPUT -m comment --comment "cali: Calico filter input" -j cali-INPUT',
    'FORWARD -m comment --comment "cali: Calico filter forward" -j cali-FORWARD',
    'OUTPUT -m comment --comment "cali: Calico filter output" -j cali-OUTPUT',
)


def jumps_on_top() -> list[str]:
    """Felix's filter jumps moved back to the top of their chains, as its refresh does when
    another agent (kube-proxy's EnsureRule prepends KUBE-FORWARD) inserted above them: else
    KUBE-FORWARD's ACCEPT of masquerade-marked packets would let NodePort and hairpin
    traffic past NetworkPolicy. For a batch after the static one (the jumps exist)."""
    return [line for jump in FILTER_JUMPS for line in (f"-D {jump}", f"-I {jump}")]


def static_rules(node: "Node", pool: object, tunnel_device: str | None = None) -> str:
    """Felix's static chains in raw, mangle, filter and nat for one node, as one
    iptables-restore ``--noflush`` batch (loaded once, when the node starts);
    ``tunnel_device`` is tunl0 (IPIP enabled), vxlan.calico (VXLAN enabled) or None."""
    return render("felix-static.rules", node=node.name, pool=pool,
                  ipip=tunnel_device == IPIP_DEVICE, vxlan=tunnel_device == VXLAN_DEVICE,
                  tunnel_device=tunnel_device, all_marks=ALL_MARKS, accept=MARK_ACCEPT,
                  pass_=MARK_PASS, from_workload=MARK_SCRATCH0,
                  forward_clear=ALL_MARKS & ~MARK_ACCEPT, vxlan_port=VXLAN_PORT,
                  all_hosts=IPSET_ALL_HOSTS, all_vxlan=IPSET_ALL_VXLAN,
                  masq_ports=f"{VXLAN_PORT + 1}-65535", filter_jumps=FILTER_JUMPS)


def table(name: str, lines: Iterable[str]) -> str:
    """One iptables-restore table section: chain declarations first, then the rules."""
    lines = [l for l in lines if l.strip() and not l.startswith("#")]
    declared = list(dict.fromkeys(l for l in lines if l.startswith(":")))
    rules = [l for l in lines if not l.startswith(":")]
    return "\n".join([f"*{name}", *declared, *rules, "COMMIT", ""])


def restore(node: "Node", batch: str, record: str | None = None) -> None:
    """Load a batch into the node with ``--noflush`` (declared chains are replaced whole),
    as Felix does: iptables-restore parses each table whole before it commits it, so a
    refused batch fails with its parser's error and leaves that table untouched (no
    separate ``--test`` run: a thousand nodes' and pods' worth of parsing twice)."""
    if record is not None:
        node.state.path(node.name, record).write_text(batch)
    node.run(["iptables-restore", "--noflush"], input=batch)


def ipsets(node: "Node", sets: dict[str, Iterable[object]]) -> None:
    """Felix's host ipsets (hash:net, family inet) in the node's namespace, in one restore."""
    lines = []
    for name, members in sets.items():
        lines.append(f"create {name} hash:net family inet -exist")
        lines += [f"add {name} {m} -exist" for m in members]
    node.run(["ipset", "restore"], input="\n".join(lines) + "\n")
