"""Cluster DNS as kube-dns deploys it, played as a node agent beside the CNI variant.

* One pod ``kube-system/kube-dns`` (labels ``k8s-app=kube-dns``) on the last node,
  created through the variant like any pod (:meth:`Agent.system_pods`), running
  kubedns (:mod:`k8stopo.dns.server`, 127.0.0.1:10053, :8081/readiness), a real
  dnsmasq cache on :53 forwarding only the cluster and reverse zones to it
  (``templates/dnsmasq.conf``, checked by ``dnsmasq --test``) and the health
  sidecar (:mod:`k8stopo.dns.sidecar`, :10054).
* The Service ``kube-system/kube-dns`` at 10.96.0.10 (ports ``dns`` 53/UDP and
  ``dns-tcp`` 53/TCP) is registered through :meth:`services`, so the run's
  kube-proxy serves it like any other Service. When no agent of the run serves
  Services (``serves_services``), each node gets a stand-in DNAT for that one
  address (``templates/kube-dns-standin.rules``) that disappears as soon as a
  kube-proxy agent runs.
* Every other pod gets Kubernetes' resolv.conf for its namespace (dnsPolicy
  ClusterFirst), bind-mounted over /etc/resolv.conf inside its pause shell's own
  mount namespace; its commands then enter that namespace (``Pod.own_mounts``), so
  ``getent hosts web`` in a pod resolves through 10.96.0.10. hostNetwork pods keep
  the node's file, as ClusterFirst falls back to Default for them, and so do pods
  with dnsPolicy Default or None (:func:`uses_cluster_dns`).
* Records are recomputed from the cluster's pods and Services whenever a pod is
  added and on :meth:`refresh` (after a readiness change); kubedns reloads on SIGHUP.
"""
from __future__ import annotations

import ipaddress
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..agent import Agent
from ..daemon import Daemon, Daemons, http_status
from ..errors import NotReady, RunError
from ..node import Endpoint
from ..templates import render
from ..workload import PodSpec, ServicePort, ServiceSpec, pod_handle
from . import server, sidecar
from .perf import QUERIES_FILE
from .zone import DOMAIN, REVERSE_ZONES, records

if TYPE_CHECKING:
    from ..context import ClusterContext
    from ..node import Node, Pod

SERVICE_IP = ipaddress.IPv4Address("10.96.0.10")
NAMESPACE = "kube-system"
POD_NAME = "kube-dns"
LABELS = {"k8s-app": "kube-dns"}
SERVICE = ServiceSpec(name="kube-dns", namespace=NAMESPACE, cluster_ip=SERVICE_IP,
                      selector=LABELS,
                      ports=(ServicePort(53, 53, "UDP", "dns"), ServicePort(53, 53, "TCP", "dns-tcp")))
SERVICE_NAME = f"{SERVICE.name}.{NAMESPACE}.svc.{DOMAIN}"
NDOTS = 5
CACHE_SIZE = 1000  # kube-dns' --cache-size
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # so the pod's python finds k8stopo


def resolv_conf(namespace: str) -> str:
    """What kubelet writes into a ClusterFirst pod of ``namespace``."""
    return (f"nameserver {SERVICE_IP}\n"
            f"search {namespace}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\n"
            f"options ndots:{NDOTS}\n")


def uses_cluster_dns(dns_policy: str, host_network: bool) -> bool:
    """Whether kubelet gives a pod the cluster's resolv.conf (pkg/kubelet/network/dns):
    ClusterFirst unless the pod is on its node's network (then it falls back to Default,
    the node's file), ClusterFirstWithHostNet always; Default and None never (None's
    own dnsConfig is not emulated: the pod keeps the node's file)."""
    return dns_policy == "ClusterFirstWithHostNet" or (dns_policy == "ClusterFirst"
                                                       and not host_network)


def dnsmasq_conf(cache_size: int = CACHE_SIZE) -> str:
    return render("dnsmasq.conf", **Dnsmasq.defaults(cache_size))


class PackageDaemon(Daemon):
    """A daemon that is a module of this package, run by this Python in the pod."""

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(PACKAGE_ROOT)}


class KubeDNS(PackageDaemon):
    """kubedns (:mod:`k8stopo.dns.server`): answers from records.json, reloads on SIGHUP;
    ready once its /readiness says 200."""

    NAME = "kubedns"

    def argv(self) -> list[object]:
        return [sys.executable, "-m", "k8stopo.dns.server", self.values["records"]]

    def ready(self) -> bool:
        return http_status(self.where, server.READINESS_PORT, "/readiness")[0] == 200


class Dnsmasq(Daemon):
    """The dnsmasq cache on :53 (templates/dnsmasq.conf, checked by ``dnsmasq --test``);
    ready once it logged that it started (its sockets are bound by then)."""

    NAME = "dnsmasq"
    TEMPLATE = "dnsmasq.conf"

    @staticmethod
    def defaults(cache_size: int = CACHE_SIZE) -> dict[str, Any]:
        return {"port": 53, "cache_size": cache_size, "upstream": "127.0.0.1",
                "upstream_port": server.DNS_PORT, "zones": (DOMAIN, *REVERSE_ZONES)}

    def check_argv(self) -> list[object]:
        return ["dnsmasq", "--test", f"--conf-file={self.conf}"]

    def argv(self) -> list[object]:
        return ["dnsmasq", "-k", f"--conf-file={self.conf}"]

    def ready(self) -> bool:
        return "started, version" in self.read_log()


class Sidecar(PackageDaemon):
    """The health sidecar (:mod:`k8stopo.dns.sidecar`, :10054): ready once it sees both
    kubedns and dnsmasq answer."""

    NAME = "sidecar"

    def argv(self) -> list[object]:
        return [sys.executable, "-m", "k8stopo.dns.sidecar", SERVICE_NAME]

    def ready(self) -> bool:
        return all(http_status(self.where, sidecar.SIDECAR_PORT, f"/healthcheck/{name}")[0]
                   == 200 for name in ("kubedns", "dnsmasq"))


class ClusterDNS(Agent):
    """kube-dns: kubedns + dnsmasq + sidecar in one pod, 10.96.0.10 for every pod."""

    name = "kube-dns"
    requires: ClassVar[tuple[str, ...]] = ("dnsmasq", "nsenter", "iptables-nat", "curl")

    def __init__(self, cluster: ClusterContext) -> None:
        super().__init__(cluster)
        self.pod: Pod | None = None
        self.daemons = Daemons()
        self.named: dict[str, Daemon] = {}  # the pod's daemons by NAME
        self.ready = False  # kubedns has its SIGHUP handler (it answers readiness)

    def system_pods(self) -> list[tuple[Node, str, str, dict[str, str]]]:
        return [(self.cluster.nodes[-1], POD_NAME, NAMESPACE, dict(LABELS))]

    def services(self) -> tuple[ServiceSpec, ...]:
        return (SERVICE,)

    @property
    def standin(self) -> bool:
        """No agent of the run serves Services: 10.96.0.10 needs this agent's DNAT."""
        return not any(a.serves_services for a in self.cluster.agents)

    # -- pods -------------------------------------------------------------------------
    def pod_added(self, pod: Pod) -> None:
        if pod.namespace == NAMESPACE and pod.name == POD_NAME:
            self.pod = pod
            self._start(pod)
        elif uses_cluster_dns(self._spec(pod).dns_policy, pod.host_network):
            self._mount_resolv_conf(pod)
        self.refresh()

    def pod_changed(self, pod: Pod) -> None:
        self.refresh()  # a headless Service's endpoints follow readiness

    def _spec(self, pod: Pod) -> PodSpec:
        """The manifests' PodSpec of ``pod`` (a plain one for pods not from manifests)."""
        workload = self.cluster.spec.workload
        specs = {pod_handle(p.name, p.namespace): p for p in workload.pods} if workload else {}
        return specs.get(pod.name, PodSpec(pod.name, pod.namespace))

    def _mount_resolv_conf(self, pod: Pod) -> None:
        """Bind-mount the pod's resolv.conf over /etc/resolv.conf in its mount namespace
        (the pause shell's, private since mnexec made it: the host's file is untouched)."""
        path = self.cluster.state.path("dns", "resolv", f"{pod.name}.conf")
        path.write_text(resolv_conf(pod.namespace))
        pod.own_mounts = True
        pod.run(["mount", "--bind", path, "/etc/resolv.conf"])

    def refresh(self) -> None:
        """Recompute the records from the cluster's pods and Services; kubedns reloads."""
        path = self.cluster.state.path("dns", "records.json")
        tmp = path.with_suffix(".tmp")
        hostnames = {pod.name: (spec.hostname, spec.subdomain)
                     for pod in self.cluster.pods for spec in [self._spec(pod)]}
        tmp.write_text(json.dumps([r.as_list() for r in records(
            self.cluster.services, self.cluster.pods, hostnames=hostnames)]))
        tmp.replace(path)
        self.cluster.state.path("dns", QUERIES_FILE).write_text(
            "".join(f"{s.name}.{s.namespace}.svc.{DOMAIN} A\n" for s in self.cluster.services))
        if self.ready:
            self._reload()

    def _reload(self) -> None:
        self.named["kubedns"].send(signal.SIGHUP)

    def service_endpoint(self) -> Endpoint:
        """The kube-dns Service as a client sees it: 10.96.0.10, served by the kube-dns pod."""
        assert self.pod is not None
        return Endpoint(name=f"{NAMESPACE}/{SERVICE.name}", ip=SERVICE_IP, pid=self.pod.pid,
                        state=self.pod.state)

    # -- the kube-dns pod ---------------------------------------------------------------
    def log(self, name: str) -> str:
        """What one of the kube-dns pod's daemons wrote (kubedns, dnsmasq, sidecar)."""
        return self.named[name].read_log()

    def _start(self, pod: Pod) -> None:
        """kubedns, dnsmasq (config checked by its own parser first) and the sidecar; they
        are waited for in :meth:`wait_ready`, while the other pods are attached."""
        self.refresh()
        records_file = self.cluster.state.path("dns", "records.json")
        self.named = {d.NAME: d for d in (KubeDNS(pod, records=records_file),
                                          Dnsmasq(pod, **Dnsmasq.defaults()), Sidecar(pod))}
        self.daemons.start(list(self.named.values()))
        if self.standin:
            rules = render("kube-dns-standin.rules", service_ip=SERVICE_IP, pod_ip=pod.ip,
                           port=53, protocols=("udp", "tcp"))
            for node in self.cluster.nodes:
                node.run(["iptables-restore", "--test", "--noflush"], input=rules)
                node.run(["iptables-restore", "--noflush"], input=rules)

    def clear_cache(self) -> None:
        """Empty dnsmasq's cache (SIGHUP, as its manual says), for cold-cache lookups;
        returns once dnsmasq has logged that it did."""
        cleared = self.log("dnsmasq").count("cleared cache")
        self.named["dnsmasq"].send(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while self.log("dnsmasq").count("cleared cache") == cleared:
            if time.monotonic() > deadline:
                raise NotReady("dnsmasq did not clear its cache after SIGHUP")
            time.sleep(0.01)

    def queries_answered(self, rdtype: str = "A") -> int:
        """kubedns' counter of ``rdtype`` queries (its :10055/metrics): those dnsmasq
        forwarded (dnsmasq's own loop-detection queries are TXT)."""
        status, body = self.health("/metrics", server.METRICS_PORT)
        if status != 200:
            raise RunError(f"kubedns metrics answered {status}: {body.strip()}")
        label = f'kubedns_queries_total{{type="{rdtype}"}} '
        return next((int(line[len(label):]) for line in body.splitlines()
                     if line.startswith(label)), 0)

    def health(self, path: str, port: int) -> tuple[int, str]:
        """GET one of the kube-dns pod's health endpoints from inside the pod."""
        assert self.pod is not None
        return http_status(self.pod, port, path)

    def wait_ready(self, timeout: float) -> None:
        """Until kubedns is ready, dnsmasq has started and the sidecar sees both answer."""
        if self.pod is None:
            raise NotReady("the kube-dns pod was never created")
        self.daemons.wait_ready(timeout)
        self.ready = True
        self._reload()  # records written while it started

    def stop(self) -> None:
        self.daemons.stop()
