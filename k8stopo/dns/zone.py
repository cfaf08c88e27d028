"""The cluster's DNS records, as kubedns computes them from Services and pods, and the
authoritative answers for them (Kubernetes DNS specification, kubernetes/dns
docs/specification.md).

Pure data and dnspython, no sockets: :func:`records` turns the cluster's Services
and pods into (owner, type, rdata) triples, :class:`Zone` answers a query message.

* ClusterIP Service: ``A svc.ns.svc.cluster.local`` -> the ClusterIP; one
  ``SRV _port._proto.svc.ns.svc.cluster.local`` per named port; a PTR for the IP.
* Headless Service (no ClusterIP): ``A`` -> every ready endpoint pod's IP (not-ready
  ones too with publishNotReadyAddresses), and per endpoint ``A
  <hostname>.svc.ns.svc.cluster.local`` with its PTR; the SRV records point at those
  names. An endpoint's hostname is the pod's ``spec.hostname`` when its
  ``spec.subdomain`` is the Service's name (as the EndpointSlice controller sets it: a
  StatefulSet's ``web-0.web.ns.svc.cluster.local``), else its dashed IP.
* Pod records ``a-b-c-d.ns.pod.cluster.local`` are answered for any dashed IPv4
  in any namespace, as kube-dns does by default ("pods insecure").
* A name that exists (or has names below it) but lacks the type asked: NOERROR,
  no answer (NODATA); anything else under the zones: NXDOMAIN; both carry the
  SOA for negative caching. Names outside the zones: REFUSED.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from ..workload import ContainerPort, ServiceSpec

DOMAIN = "cluster.local"
TTL = 30  # kube-dns' default record TTL
#: reverse zones kube-dns' dnsmasq forwards to kubedns, beside the cluster domain
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")


class PodLike(Protocol):
    """What records need from a pod (a :class:`k8stopo.node.Pod` or a test's stand-in)."""

    name: str
    namespace: str
    labels: dict[str, str]
    ip: ipaddress.IPv4Address
    ready: bool
    ports: tuple[ContainerPort, ...]


@dataclass(frozen=True)
class Record:
    owner: str  # absolute, with the trailing dot
    rdtype: str  # A, SRV, PTR
    rdata: str  # presentation format

    def as_list(self) -> list[str]:
        return [self.owner, self.rdtype, self.rdata]


def dashed(ip: ipaddress.IPv4Address) -> str:
    return str(ip).replace(".", "-")


def selected(service: ServiceSpec, pods: Iterable[PodLike]) -> list[PodLike]:
    """The Service's published endpoints: pods of its namespace that match a non-empty
    selector and are ready (or any, with publishNotReadyAddresses)."""
    if not service.selector:
        return []
    return [p for p in pods if p.namespace == service.namespace
            and (p.ready or service.publish_not_ready)
            and all(p.labels.get(k) == v for k, v in service.selector.items())]


def _target_port(port: int | str, protocol: str, pod: PodLike) -> int | None:
    """A Service port's targetPort on one pod: a number, or the pod's port of that name."""
    if isinstance(port, int):
        return port
    return next((c.container_port for c in pod.ports
                 if c.name == port and c.protocol == protocol), None)


def records(services: Iterable[ServiceSpec], pods: Sequence[PodLike], domain: str = DOMAIN,
            hostnames: Mapping[str, tuple[str | None, str | None]] | None = None) -> list[Record]:
    """Every record kubedns serves for these Services and pods; ``hostnames`` maps a pod's
    name to its ``(spec.hostname, spec.subdomain)``."""
    hostnames = hostnames or {}
    out: list[Record] = []
    for svc in services:
        fqdn = f"{svc.name}.{svc.namespace}.svc.{domain}."
        named = [p for p in svc.ports if p.name]
        if svc.cluster_ip is not None:
            out.append(Record(fqdn, "A", str(svc.cluster_ip)))
            out.append(Record(dns.reversename.from_address(str(svc.cluster_ip)).to_text(),
                              "PTR", fqdn))
            out += [Record(f"_{p.name}._{p.protocol.lower()}.{fqdn}", "SRV",
                           f"0 100 {p.port} {fqdn}") for p in named]
            continue
        endpoints = selected(svc, pods)
        for pod in endpoints:
            hostname, subdomain = hostnames.get(pod.name, (None, None))
            host = f"{hostname if hostname and subdomain == svc.name else dashed(pod.ip)}.{fqdn}"
            out += [Record(fqdn, "A", str(pod.ip)), Record(host, "A", str(pod.ip)),
                    Record(dns.reversename.from_address(str(pod.ip)).to_text(), "PTR", host)]
            for p in named:
                target = _target_port(p.target_port, p.protocol, pod)
                if target is not None:
                    out.append(Record(f"_{p.name}._{p.protocol.lower()}.{fqdn}", "SRV",
                                      f"0 {100 // len(endpoints)} {target} {host}"))
    return out


class Zone:
    """Authoritative answers for the cluster domain and the reverse zones."""

    def __init__(self, recs: Iterable[Record], domain: str = DOMAIN) -> None:
        self.domain = dns.name.from_text(domain)
        self.apexes = [self.domain, *(dns.name.from_text(z) for z in REVERSE_ZONES)]
        self.pod_suffix = dns.name.from_text(f"pod.{domain}")
        self.rrsets: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}  # owner -> type
        self.names: set[dns.name.Name] = set()  # owners and every name above them
        for rec in recs:
            owner = dns.name.from_text(rec.owner)
            rdtype = dns.rdatatype.from_text(rec.rdtype)
            rrset = self.rrsets.setdefault(owner, {}).get(rdtype)
            if rrset is None:
                rrset = self.rrsets[owner][rdtype] = dns.rrset.RRset(
                    owner, dns.rdataclass.IN, rdtype)
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, rec.rdata), TTL)
            while owner not in self.names and len(owner) > 1:
                self.names.add(owner)
                owner = owner.parent()

    def soa(self, apex: dns.name.Name) -> dns.rrset.RRset:
        """kube-dns' SOA; its minimum (the negative-caching TTL) is the record TTL."""
        return dns.rrset.from_text(apex, TTL, "IN", "SOA",
                                   f"ns.dns.{self.domain} hostmaster.{self.domain} "
                                   f"1 28800 7200 604800 {TTL}")

    def _pod_record(self, qname: dns.name.Name) -> dns.rrset.RRset | None:
        """``a-b-c-d.<ns>.pod.<domain>``: the dashed address itself."""
        if not qname.is_subdomain(self.pod_suffix) or len(qname) != len(self.pod_suffix) + 2:
            return None
        try:
            ip = ipaddress.IPv4Address(qname.labels[0].decode().replace("-", "."))
        except ValueError:
            return None
        return dns.rrset.from_text(qname, TTL, "IN", "A", str(ip))

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The response to one query message."""
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY
                               else dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        apex = next((a for a in self.apexes if qname.is_subdomain(a)), None)
        if apex is None or question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        pod = self._pod_record(qname)
        if pod is not None:
            if qtype in (dns.rdatatype.A, dns.rdatatype.ANY):
                response.answer.append(pod)
            else:
                response.authority.append(self.soa(apex))
            return response
        if qname == apex and qtype == dns.rdatatype.SOA:
            response.answer.append(self.soa(apex))
            return response
        owned = self.rrsets.get(qname, {})
        found = list(owned.values()) if qtype == dns.rdatatype.ANY else (
            [owned[qtype]] if qtype in owned else [])
        if found:
            response.answer.extend(found)
            for rr in found:  # glue for SRV targets, as kubedns adds it
                if rr.rdtype == dns.rdatatype.SRV:
                    for target in {rd.target for rd in rr}:
                        glue = self.rrsets.get(target, {}).get(dns.rdatatype.A)
                        if glue is not None and glue not in response.additional:
                            response.additional.append(glue)
            return response
        if qname not in self.names and qname != apex:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self.soa(apex))
        return response
