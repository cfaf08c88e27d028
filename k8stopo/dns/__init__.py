"""Cluster DNS as kube-dns deploys it: kubedns (an authoritative server on dnspython)
behind a real dnsmasq cache, each with its health endpoint, at 10.96.0.10; see
:mod:`k8stopo.dns.agent` and docs/dns.md."""
from .agent import SERVICE_IP, ClusterDNS, resolv_conf

__all__ = ["SERVICE_IP", "ClusterDNS", "resolv_conf"]
