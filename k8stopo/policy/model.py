"""networking.k8s.io/v1 NetworkPolicy, parsed from the API's own dicts into checked dataclasses.

A field this version does not implement must never be ignored (an ignored policy field is a
security hole), so every unknown key, and every value the API server itself would reject
(ValidateNetworkPolicy), raises :class:`~k8stopo.spec.SpecError` with one line naming it.
Defaults are the API server's: ``policyTypes`` from SetDefaults_NetworkPolicySpec, protocol TCP.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .. import apinames
from ..spec import SpecError

API_VERSION = "networking.k8s.io/v1"
PROTOCOLS = ("TCP", "UDP")  # SCTP is valid in the API but not implemented here: refused
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":  # a missing key is "not in" (labels.Selector semantics)
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector: matchLabels AND matchExpressions; empty selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def requirements(self) -> tuple[Requirement, ...]:
        """matchLabels as In requirements, then matchExpressions, sorted by key as
        LabelSelectorAsSelector sorts them (agents derive set names from this form)."""
        reqs = [Requirement(k, "In", (v,)) for k, v in self.match_labels]
        reqs += [Requirement(r.key, r.operator, tuple(sorted(r.values)))
                 for r in self.match_expressions]
        return tuple(sorted(reqs, key=lambda r: (r.key, r.operator, r.values)))


@dataclass(frozen=True)
class IPBlock:
    cidr: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...] = ()

    def matches(self, ip: ipaddress.IPv4Address) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.excepts)


@dataclass(frozen=True)
class Peer:
    """NetworkPolicyPeer: podSelector and/or namespaceSelector (both: AND), or ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol; str: a named port
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ingress (``from``) or egress (``to``) rule; empty peers or ports match all."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    name: str
    namespace: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]  # subset of ("Ingress", "Egress"), defaulted
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return namespace == self.namespace and self.pod_selector.matches(labels)


# -- parsing -----------------------------------------------------------------------------
def _fields(obj: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``obj`` as a dict holding only ``allowed`` keys (None values dropped, as the API does)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise SpecError(f"NetworkPolicy {where}: expected a mapping, not {type(obj).__name__}")
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise SpecError(f"NetworkPolicy {where}: field {unknown[0]!r} is not implemented "
                        f"(known: {', '.join(allowed)})")
    return {k: v for k, v in obj.items() if v is not None}


def _list(obj: Any, where: str) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise SpecError(f"NetworkPolicy {where}: expected a list, not {type(obj).__name__}")
    return obj


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"NetworkPolicy {where}: expected a string, not {value!r}")
    return value


def _label(value: Any, where: str, key: bool = False) -> str:
    """A label key or value the API server would take (else it could never match)."""
    if not (apinames.label_key if key else apinames.label_value)(value):
        raise SpecError(f"NetworkPolicy {where}: {value!r} is not a valid label "
                        f"{'key' if key else 'value'}")
    return value


def _label_map(obj: Any, where: str) -> tuple[tuple[str, str], ...]:
    if obj is None:
        return ()
    if not isinstance(obj, dict):
        raise SpecError(f"NetworkPolicy {where}: expected a mapping of labels")
    return tuple(sorted((_label(k, where, key=True), _label(v, f"{where}.{k}"))
                        for k, v in obj.items()))


def parse_selector(obj: Any, where: str) -> LabelSelector:
    d = _fields(obj, where, ("matchLabels", "matchExpressions"))
    exprs = []
    for i, e in enumerate(_list(d.get("matchExpressions"), f"{where}.matchExpressions")):
        at = f"{where}.matchExpressions[{i}]"
        e = _fields(e, at, ("key", "operator", "values"))
        key, op = _label(e.get("key"), f"{at}.key", key=True), e.get("operator")
        if op not in OPERATORS:
            raise SpecError(f"NetworkPolicy {at}.operator: {op!r} is not one of "
                            f"{', '.join(OPERATORS)}")
        values = tuple(_label(v, f"{at}.values") for v in _list(e.get("values"), f"{at}.values"))
        if op in ("In", "NotIn") and not values:
            raise SpecError(f"NetworkPolicy {at}: operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise SpecError(f"NetworkPolicy {at}: operator {op} takes no values")
        exprs.append(Requirement(key, op, values))
    return LabelSelector(_label_map(d.get("matchLabels"), f"{where}.matchLabels"), tuple(exprs))


def _network(value: Any, where: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(_string(value, where), strict=True)
    except ValueError as exc:
        raise SpecError(f"NetworkPolicy {where}: {value!r} is not a valid CIDR: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise SpecError(f"NetworkPolicy {where}: only IPv4 is implemented, not {value!r}")
    return net


def _peer(obj: Any, where: str) -> Peer:
    d = _fields(obj, where, ("podSelector", "namespaceSelector", "ipBlock"))
    if not d:
        raise SpecError(f"NetworkPolicy {where}: a peer needs podSelector, namespaceSelector "
                        f"or ipBlock")
    if "ipBlock" in d:
        if len(d) > 1:
            raise SpecError(f"NetworkPolicy {where}: ipBlock cannot be combined with selectors")
        b = _fields(d["ipBlock"], f"{where}.ipBlock", ("cidr", "except"))
        cidr = _network(b.get("cidr"), f"{where}.ipBlock.cidr")
        excepts = tuple(_network(e, f"{where}.ipBlock.except")
                        for e in _list(b.get("except"), f"{where}.ipBlock.except"))
        for e in excepts:
            if not (e.subnet_of(cidr) and e != cidr):
                raise SpecError(f"NetworkPolicy {where}.ipBlock.except: {e} is not strictly "
                                f"within {cidr}")
        return Peer(ip_block=IPBlock(cidr, excepts))
    return Peer(
        pod_selector=(parse_selector(d["podSelector"], f"{where}.podSelector")
                      if "podSelector" in d else None),
        namespace_selector=(parse_selector(d["namespaceSelector"], f"{where}.namespaceSelector")
                            if "namespaceSelector" in d else None))


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SpecError(f"NetworkPolicy {where}: {value!r} is not a port number (1-65535)")
    return value


def _port(obj: Any, where: str) -> PolicyPort:
    d = _fields(obj, where, ("protocol", "port", "endPort"))
    protocol = d.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise SpecError(f"NetworkPolicy {where}.protocol: {protocol!r} is not implemented "
                        f"({', '.join(PROTOCOLS)})")
    port: int | str | None = d.get("port")
    if isinstance(port, str):
        if re.fullmatch(r"[0-9]+", port):  # an IntOrString given as a quoted number
            port = int(port)
        elif not apinames.port_name(port):
            raise SpecError(f"NetworkPolicy {where}.port: {port!r} is neither a number nor a "
                            f"valid port name")
    if isinstance(port, int) or port is None:
        port = None if port is None else _port_number(port, f"{where}.port")
    end = d.get("endPort")
    if end is not None:
        end = _port_number(end, f"{where}.endPort")
        if not isinstance(port, int):
            raise SpecError(f"NetworkPolicy {where}.endPort needs a numeric port")
        if end < port:
            raise SpecError(f"NetworkPolicy {where}.endPort {end} is below port {port}")
    return PolicyPort(protocol, port, end)


def _rules(obj: Any, where: str, peers_key: str) -> tuple[Rule, ...]:
    rules = []
    for i, r in enumerate(_list(obj, where)):
        at = f"{where}[{i}]"
        d = _fields(r, at, (peers_key, "ports"))
        peers = tuple(_peer(p, f"{at}.{peers_key}[{j}]")
                      for j, p in enumerate(_list(d.get(peers_key), f"{at}.{peers_key}")))
        ports = tuple(_port(p, f"{at}.ports[{j}]")
                      for j, p in enumerate(_list(d.get("ports"), f"{at}.ports")))
        rules.append(Rule(peers, ports))
    return tuple(rules)


def parse(doc: Mapping[str, Any]) -> NetworkPolicy:
    """One NetworkPolicy document (a dict as YAML gives it) -> :class:`NetworkPolicy`."""
    d = _fields(dict(doc), "document", ("apiVersion", "kind", "metadata", "spec"))
    if d.get("apiVersion") != API_VERSION or d.get("kind") != "NetworkPolicy":
        raise SpecError(f"not a {API_VERSION} NetworkPolicy: apiVersion {d.get('apiVersion')!r}, "
                        f"kind {d.get('kind')!r}")
    meta = _fields(d.get("metadata"), "metadata",
                   ("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
                    "generation", "creationTimestamp"))
    name = _string(meta.get("name"), "metadata.name")
    namespace = _string(meta.get("namespace", "default"), "metadata.namespace")
    if not apinames.dns_subdomain(name):
        raise SpecError(f"NetworkPolicy metadata.name {name!r} is not a DNS subdomain")
    if not apinames.dns_label(namespace):
        raise SpecError(f"NetworkPolicy {name}: namespace {namespace!r} is not a DNS label")
    where = f"{namespace}/{name} spec"
    spec = _fields(d.get("spec"), where, ("podSelector", "policyTypes", "ingress", "egress"))
    if "podSelector" not in spec:
        raise SpecError(f"NetworkPolicy {where}: podSelector is required ({{}} selects all pods)")
    types = _list(spec.get("policyTypes"), f"{where}.policyTypes")
    for t in types:
        if t not in ("Ingress", "Egress"):
            raise SpecError(f"NetworkPolicy {where}.policyTypes: {t!r} is not Ingress or Egress")
    egress = _rules(spec.get("egress"), f"{where}.egress", "to")
    if not types:  # SetDefaults_NetworkPolicySpec
        types = ["Ingress"] + (["Egress"] if egress else [])
    return NetworkPolicy(
        name=name, namespace=namespace,
        pod_selector=parse_selector(spec["podSelector"], f"{where}.podSelector"),
        policy_types=tuple(t for t in ("Ingress", "Egress") if t in types),
        ingress=_rules(spec.get("ingress"), f"{where}.ingress", "from"),
        egress=egress)


def parse_all(docs: Any) -> tuple[NetworkPolicy, ...]:
    """Every document of ``Workload.network_policies``; a name used twice in a namespace is
    refused as the API server would."""
    policies = tuple(parse(doc) for doc in docs)
    seen: set[str] = set()
    for p in policies:
        if p.key in seen:
            raise SpecError(f"NetworkPolicy {p.key} is defined twice")
        seen.add(p.key)
    return policies
